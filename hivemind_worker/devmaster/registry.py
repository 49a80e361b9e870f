"""Enrollment tokens, nodes and node credentials in the dev-master's database.

Secrets (tokens ``hmt_...``, credentials ``hmc_...``) are returned once to the caller
and stored only as their SHA-256; they are high-entropy random strings, so a plain
hash is enough. Errors carry the message a user reads (the service maps them to
gRPC status codes); nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import secrets
import sqlite3
from dataclasses import dataclass

from hivemind_worker import usage
from hivemind_worker.devmaster.db import Tx, now
from hivemind_worker.errors import EnrollmentError, UsageRecordError

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "hmt_"
CREDENTIAL_PREFIX = "hmc_"
DEFAULT_SUBNET = "10.88.0.0/24"
TOKEN_CREATE_HINT = "create a new one with `hivemind-worker dev-master token create`"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(conn: sqlite3.Connection, ttl_s: float = 3600.0, uses: int = 1) -> str:
    if ttl_s <= 0:
        raise EnrollmentError("--ttl must be longer than 0 seconds, e.g. 10m or 1h")
    if uses < 1:
        raise EnrollmentError("--uses must be at least 1")
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    t = now()
    conn.execute(
        "INSERT INTO tokens (token_hash, created_at, expires_at, uses_left, uses_total) VALUES (?,?,?,?,?)",
        (secret_hash(token), t, t + ttl_s, uses, uses),
    )
    return token


@dataclass(frozen=True)
class Enrolled:
    node_id: str
    credential: str
    vpn_address: str  # with prefix, e.g. 10.88.0.2/32


def _take_token(conn: sqlite3.Connection, token: str) -> None:
    row = conn.execute("SELECT * FROM tokens WHERE token_hash=?", (secret_hash(token),)).fetchone()
    if row is None:
        raise EnrollmentError(f"enrollment token not recognised by this master; check it, or {TOKEN_CREATE_HINT}")
    if row["expires_at"] <= now():
        raise EnrollmentError(f"enrollment token expired; {TOKEN_CREATE_HINT}")
    if row["uses_left"] <= 0:
        raise EnrollmentError(f"enrollment token already used; each token enrolls a limited number of nodes; {TOKEN_CREATE_HINT}")
    conn.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash=?", (row["token_hash"],))


def _free_address(conn: sqlite3.Connection, subnet: str) -> str:
    net = ipaddress.ip_network(subnet)
    used = {r[0].split("/")[0] for r in conn.execute("SELECT vpn_address FROM nodes WHERE revoked_at IS NULL")}
    hosts = net.hosts()
    next(hosts)  # the first host address is the hub's
    for host in hosts:
        if str(host) not in used:
            return f"{host}/{net.max_prefixlen}"
    raise EnrollmentError(f"the VPN subnet {subnet} is full; revoke unused nodes (`dev-master nodes revoke`)")


def hub_address(subnet: str = DEFAULT_SUBNET) -> str:
    """The hub's (and the master's) address inside the tunnel, with the subnet prefix."""
    net = ipaddress.ip_network(subnet)
    return f"{next(net.hosts())}/{net.prefixlen}"


def enroll(conn: sqlite3.Connection, token: str, hostname: str, facts: dict, wg_public_key: str,
           subnet: str = DEFAULT_SUBNET, usage_key: bytes = b"") -> Enrolled:
    """Spend one use of ``token`` and record a new node (atomically). ``usage_key``: the
    node's raw Ed25519 key for usage records (checked by the caller; b"" = none)."""
    if not token:
        raise EnrollmentError(f"no enrollment token given; {TOKEN_CREATE_HINT}")
    with Tx(conn):
        _take_token(conn, token)
        address = _free_address(conn, subnet)
        node_id = "node-" + secrets.token_hex(4)
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO nodes (node_id, hostname, facts_json, wg_public_key, vpn_address, credential_hash,"
            " enrolled_at, agent_version, usage_public_key) VALUES (?,?,?,?,?,?,?,?,?)",
            (node_id, hostname, json.dumps(facts), wg_public_key, address, secret_hash(credential), now(),
             str(facts.get("agent_version", "")), usage_key or None),
        )
    return Enrolled(node_id=node_id, credential=credential, vpn_address=address)


def node_for_credential(conn: sqlite3.Connection, credential: str) -> sqlite3.Row | None:
    """The node a credential belongs to, or None when unknown or revoked."""
    if not credential:
        return None
    return conn.execute(
        "SELECT * FROM nodes WHERE credential_hash=? AND revoked_at IS NULL", (secret_hash(credential),)
    ).fetchone()


def revoke(conn: sqlite3.Connection, node_id: str) -> bool:
    """Revoke a node; False when no such (unrevoked) node exists."""
    cur = conn.execute("UPDATE nodes SET revoked_at=? WHERE node_id=? AND revoked_at IS NULL", (now(), node_id))
    return cur.rowcount == 1


def revoked_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT node_id FROM nodes WHERE revoked_at IS NOT NULL")}


def revoked_keys(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT wg_public_key FROM nodes WHERE revoked_at IS NOT NULL AND wg_public_key != ''")}


def active_peers(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(public key, address) of every node not revoked, for the WireGuard hub."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT wg_public_key, vpn_address FROM nodes WHERE revoked_at IS NULL AND wg_public_key != ''"
    )]


def list_nodes(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT node_id, hostname, vpn_address, enrolled_at, revoked_at, draining, drain_reason, session_state, agent_version,"
        " capacity_json, last_seen_at, last_report_at, last_telemetry, usage_public_key FROM nodes ORDER BY enrolled_at"
    ).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["usage_public_key"] = d["usage_public_key"].hex() if d["usage_public_key"] else None
        d["capacity"] = json.loads(d.pop("capacity_json") or "{}")
        d["last_telemetry"] = json.loads(d["last_telemetry"]) if d["last_telemetry"] else None
        d["draining"] = bool(d["draining"])
        d["revoked"] = d["revoked_at"] is not None
        if d["revoked"]:
            d["session_state"] = "revoked"
        out.append(d)
    return out


def mark_session(conn: sqlite3.Connection, node_id: str, session_id: str, connected: bool, reason: str = "",
                 current: bool = True) -> None:
    """Record a session's start or end; ``current=False`` (a replaced session) leaves the node's state."""
    t = now()
    if connected:
        conn.execute("INSERT INTO sessions (session_id, node_id, connected_at) VALUES (?,?,?)", (session_id, node_id, t))
        conn.execute("UPDATE nodes SET session_state='connected', last_seen_at=? WHERE node_id=?", (t, node_id))
    else:
        conn.execute("UPDATE sessions SET disconnected_at=?, end_reason=? WHERE session_id=?", (t, reason, session_id))
        if current:
            conn.execute("UPDATE nodes SET session_state='disconnected', last_seen_at=? WHERE node_id=?", (t, node_id))


def record_hello(conn: sqlite3.Connection, node_id: str, agent_version: str, capacity: dict, draining: bool,
                 drain_reason: str = "", usage_key: bytes = b"") -> None:
    conn.execute(
        "UPDATE nodes SET agent_version=?, capacity_json=?, draining=?, drain_reason=?, last_seen_at=? WHERE node_id=?",
        (agent_version, json.dumps(capacity), int(draining), drain_reason if draining else "", now(), node_id),
    )
    if usage_key:
        learn_usage_key(conn, node_id, usage_key)


def learn_usage_key(conn: sqlite3.Connection, node_id: str, key: bytes) -> None:
    """A hello's usage key: kept when the node has none on file (trust on first use, for
    nodes enrolled before usage records); never replaces the key on file."""
    where = {"node_id": node_id}
    try:
        usage.check_public_key(key)
    except UsageRecordError as exc:
        logger.warning("hello's usage key ignored: %s", exc, extra=where)
        return
    if conn.execute("UPDATE nodes SET usage_public_key=? WHERE node_id=? AND usage_public_key IS NULL",
                    (key, node_id)).rowcount:
        logger.info("usage key %s learned from the node's hello (trust on first use): its results now need "
                    "a usage record signed with it", key.hex()[:16], extra=where)
        return
    row = conn.execute("SELECT usage_public_key FROM nodes WHERE node_id=?", (node_id,)).fetchone()
    if row is not None and row[0] != key:
        logger.warning("hello brings usage key %s but %s is on file; the key on file is kept, so the node's "
                       "records will not verify: if its key was re-made, revoke the node and enroll it again",
                       key.hex()[:16], row[0].hex()[:16], extra=where)


def record_telemetry(conn: sqlite3.Connection, node_id: str, telemetry_json: str) -> None:
    t = now()
    conn.execute(
        "UPDATE nodes SET last_report_at=?, last_seen_at=?, last_telemetry=? WHERE node_id=?",
        (t, t, telemetry_json, node_id),
    )


def set_draining(conn: sqlite3.Connection, node_id: str, draining: bool, reason: str = "") -> None:
    conn.execute("UPDATE nodes SET draining=?, drain_reason=? WHERE node_id=?",
                 (int(draining), reason if draining else "", node_id))


def drain_flags(conn: sqlite3.Connection, node_ids: list[str]) -> dict[str, bool]:
    if not node_ids:
        return {}
    marks = ",".join("?" * len(node_ids))
    return {r[0]: bool(r[1]) for r in conn.execute(
        f"SELECT node_id, draining FROM nodes WHERE node_id IN ({marks})", node_ids)}


def request_drain(conn: sqlite3.Connection, node_id: str, draining: bool) -> bool:
    """The operator's drain/resume; False when no such (unrevoked) node exists."""
    cur = conn.execute("UPDATE nodes SET draining=?, drain_reason=? WHERE node_id=? AND revoked_at IS NULL",
                       (int(draining), "operator" if draining else "", node_id))
    return cur.rowcount == 1


def reset_sessions(conn: sqlite3.Connection) -> None:
    """At `serve` start: sessions left open by a crash are closed."""
    t = now()
    conn.execute("UPDATE sessions SET disconnected_at=?, end_reason='master restarted' WHERE disconnected_at IS NULL", (t,))
    conn.execute("UPDATE nodes SET session_state='disconnected' WHERE session_state='connected'")
