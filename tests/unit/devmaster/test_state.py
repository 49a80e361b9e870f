"""The dev-master's state: tokens, nodes, tasks, parsers, CA (no network)."""

from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hivemind_worker.devmaster import ca, registry, taskdb
from hivemind_worker.devmaster.db import ChangeWatch, open_db
from hivemind_worker.devmaster.layout import (StateDir, default_state_dir, parse_duration, parse_size,
                                              resolve_state_dir, split_listen)
from hivemind_worker.devmaster.submit import SubmitRequest, _exit_code, zip_directory
from hivemind_worker.errors import ConfigError, EnrollmentError


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "m").create()


@pytest.fixture
def conn(state):
    c = open_db(state.db)
    yield c
    c.close()


def enroll(conn, token, host="h"):
    return registry.enroll(conn, token, host, {"hostname": host}, "")


def test_token_uses_expiry_and_unknown(conn):
    token = registry.create_token(conn, ttl_s=3600, uses=2)
    assert token.startswith("hmt_")
    a, b = enroll(conn, token, "a"), enroll(conn, token, "b")
    assert a.node_id != b.node_id and (a.vpn_address, b.vpn_address) == ("10.88.0.2/32", "10.88.0.3/32")
    with pytest.raises(EnrollmentError, match="already used"):
        enroll(conn, token)
    with pytest.raises(EnrollmentError, match="not recognised"):
        enroll(conn, "hmt_unknown")
    short = registry.create_token(conn, ttl_s=0.05)
    time.sleep(0.1)
    with pytest.raises(EnrollmentError, match="expired; create a new one with `hivemind-worker dev-master token create`"):
        enroll(conn, short)
    with pytest.raises(EnrollmentError):
        registry.create_token(conn, ttl_s=0)


def test_a_refused_enrollment_spends_nothing(conn):
    token = registry.create_token(conn, uses=1)
    conn.execute("UPDATE tokens SET expires_at=0")
    with pytest.raises(EnrollmentError):
        enroll(conn, token)
    assert conn.execute("SELECT uses_left FROM tokens").fetchone()[0] == 1
    assert registry.list_nodes(conn) == []


def test_secrets_are_stored_as_hashes_and_revocation(conn, state):
    token = registry.create_token(conn)
    node = enroll(conn, token)
    raw = state.db.read_bytes() + Path(str(state.db) + "-wal").read_bytes()
    assert token.encode() not in raw and node.credential.encode() not in raw
    assert registry.node_for_credential(conn, node.credential)["node_id"] == node.node_id
    assert registry.revoke(conn, node.node_id) and not registry.revoke(conn, node.node_id)
    assert registry.node_for_credential(conn, node.credential) is None
    assert registry.list_nodes(conn)[0]["session_state"] == "revoked"
    # A revoked node's address is free again.
    assert enroll(conn, registry.create_token(conn)).vpn_address == node.vpn_address


def test_full_subnet_is_a_clear_error(conn):
    token = registry.create_token(conn, uses=10)
    registry.enroll(conn, token, "a", {}, "", subnet="10.9.0.0/30")  # .1 hub, .2 the only node
    with pytest.raises(EnrollmentError, match="is full"):
        registry.enroll(conn, token, "b", {}, "", subnet="10.9.0.0/30")


def test_change_watch_sees_other_connections_only(state, conn):
    watch = ChangeWatch(conn)
    registry.create_token(conn)
    assert not watch.changed()
    other = open_db(state.db)
    registry.create_token(other)
    other.close()
    assert watch.changed() and not watch.changed()


def test_outcome_survives_later_states_and_log_gaps(conn):
    task_id = taskdb.create_task(conn, {"cpu_millicores": 1000})
    assert taskdb.assign(conn, task_id, "node-1") and not taskdb.assign(conn, task_id, "node-2")
    assert not taskdb.record_event(conn, "node-2", task_id, "running")
    for state in ("accepted", "running"):
        taskdb.record_event(conn, "node-1", task_id, state)
    taskdb.record_event(conn, "node-1", task_id, "exited", exit_code=4)
    taskdb.record_event(conn, "node-1", task_id, "uploading")
    taskdb.record_event(conn, "node-1", task_id, "done")
    row = taskdb.get_task(conn, task_id)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 4)
    assert [e["state"] for e in taskdb.events(conn, task_id)] == [
        "assigned", "accepted", "running", "exited", "uploading", "done"]
    assert taskdb.store_logs(conn, task_id, [(2, "stdout", "b", 0), (1, "stdout", "a", 0)]) == (2, "")
    assert taskdb.store_logs(conn, task_id, [(4, "stdout", "d", 0)]) == (2, "")
    assert taskdb.store_logs(conn, task_id, [(3, "stdout", "c", 0), (3, "stdout", "c", 0)]) == (4, "")


def test_ca_hash_is_sha256_of_the_ca_certificate_der(state):
    from hivemind_worker.control.channel import ca_fingerprint

    cert, _ = ca.ensure_ca(state)
    der = cert.public_bytes(Encoding.DER)
    assert ca.ca_hash(state) == "sha256:" + hashlib.sha256(der).hexdigest() == ca_fingerprint(der)
    assert ca.ensure_ca(state)[0] == cert  # made once
    chain, _ = ca.issue_server_cert(state, ["10.88.0.1", "master.example"])
    leaf, ca_again = x509.load_pem_x509_certificates(chain)
    assert ca_again == cert
    leaf.verify_directly_issued_by(cert)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} >= {"10.88.0.1", "master.example", "127.0.0.1", "localhost"}
    assert state.ca_key.stat().st_mode & 0o777 == 0o600 and state.server_key.stat().st_mode & 0o777 == 0o600
    # A wildcard listener is reachable at every local address.
    import psutil

    chain, _ = ca.issue_server_cert(state, ["0.0.0.0"])
    leaf = x509.load_pem_x509_certificates(chain)[0]
    names = {str(n.value) for n in leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == 2}
    assert local <= names and "0.0.0.0" not in names


def test_parsers():
    assert [parse_duration(t) for t in ("30s", "10m", "1h", "2d", "45")] == [30, 600, 3600, 172800, 45]
    assert [parse_size(t) for t in ("512m", "2g", "1GiB", "100")] == [512 << 20, 2 << 30, 1 << 30, 100]
    assert split_listen("[::1]:50051") == ("::1", 50051) and split_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad, fn in (("1 week", parse_duration), ("lots", parse_size), ("nohost", split_listen)):
        with pytest.raises(ConfigError):
            fn(bad)
    assert default_state_dir({"HIVEMIND_STATE_DIR": "/x"}) == Path("/x/dev-master")
    assert default_state_dir({}) == Path("dev-master-state")
    assert resolve_state_dir(Path("rel")).root.is_absolute()


def test_submit_request_and_bundles(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "main.py").write_text("print(1)")
    (tmp_path / "d" / "sub" / "x").write_text("x")
    (tmp_path / "d" / "link").symlink_to("/etc/hostname")
    names = zipfile.ZipFile(__import__("io").BytesIO(zip_directory(tmp_path / "d"))).namelist()
    assert sorted(names) == ["main.py", "sub/x"]
    req = SubmitRequest.build(path=tmp_path / "d", cpus=1.5, memory="1g", timeout="2m", env=["A=1", "B=x=y"],
                              command=None, network="bridge")
    assert req.spec["cpu_millicores"] == 1500 and req.spec["memory_bytes"] == 1 << 30
    assert req.spec["timeout_s"] == 120 and req.spec["env"] == {"A": "1", "B": "x=y"} and req.bundle
    assert SubmitRequest.build(path=None, command="python -c 'print(1)'").spec["command"] == ["python", "-c", "print(1)"]
    for kwargs in ({"path": None}, {"path": None, "command": "x", "network": "host"},
                   {"path": None, "command": "x", "env": ["NOVALUE"]}, {"path": tmp_path / "d" / "main.py"}):
        with pytest.raises(ConfigError):
            SubmitRequest.build(**kwargs)


def test_exit_codes():
    assert [_exit_code(o, c) for o, c in (("exited", 0), ("exited", 3), ("exited", -9), ("timed_out", 137),
                                          ("oom_killed", 137), ("cancelled", 143), ("rejected", None),
                                          ("failed", None), ("lost", None))] == [0, 3, 1, 124, 137, 130, 7, 7, 7]


def test_wait_tells_why_a_task_stays_queued(tmp_path):
    from hivemind_worker.devmaster import submit as core

    state = StateDir(tmp_path / "m").create()
    open_db(state.db).close()
    task_id = core.submit(state, SubmitRequest(bundle=b"", spec={"cpu_millicores": 2000, "memory_bytes": 1 << 30}))
    messages: list[str] = []

    def on_state(message: str) -> None:
        messages.append(message)
        if message.startswith("still queued"):
            c = open_db(state.db)
            taskdb.request_cancel(c, task_id)
            c.close()

    outcome = core.wait(state, task_id, tmp_path / "out", on_state=on_state, poll_s=0.02, queued_hint_s=0.1)
    assert messages[0] == "queued" and "room for 2 CPU, 1024 MiB, 0 GPU" in messages[1]
    assert (outcome.outcome, outcome.exit_code, outcome.result_path) == ("cancelled", 130, None)
    assert "no result" not in outcome.message


def test_an_older_state_db_gets_the_new_columns(state):
    import sqlite3

    old = sqlite3.connect(state.db)
    old.executescript("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, created_at REAL NOT NULL, priority INTEGER NOT NULL"
                      " DEFAULT 0, spec_json TEXT NOT NULL, bundle_size INTEGER NOT NULL DEFAULT 0, bundle_sha256 TEXT"
                      " NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'queued', node_id TEXT, assigned_at REAL,"
                      " outcome TEXT, exit_code INTEGER, reason TEXT NOT NULL DEFAULT '', cancel_requested INTEGER NOT"
                      " NULL DEFAULT 0, cancel_sent INTEGER NOT NULL DEFAULT 0, result_size INTEGER, result_sha256 TEXT,"
                      " result_complete INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL);"
                      "INSERT INTO tasks (task_id, created_at, spec_json, updated_at) VALUES ('task-old', 0, '{}', 0);")
    old.close()
    conn = open_db(state.db)
    row = taskdb.get_task(conn, "task-old")
    assert (row["attempt"], row["event_seq"], row["retry_pending"]) == (1, 0, 0)
    open_db(state.db).close()  # a second opener finds them there
    conn.close()


def test_log_limits_cut_lines_and_drop_the_rest_but_acknowledge_them(conn):
    task_id = taskdb.create_task(conn, {})
    limits = taskdb.LogLimits(max_lines=3, max_bytes=10_000, max_line_bytes=10)
    mark, note = taskdb.store_logs(conn, task_id, [(1, "stdout", "a" * 50, 0), (2, "stdout", "b", 0)], limits)
    assert mark == 2 and "line 1 cut to 10 bytes" in note
    mark, note = taskdb.store_logs(conn, task_id, [(s, "stdout", "c", 0) for s in range(3, 8)], limits)
    assert mark == 7 and "log limit reached at line 3" in note
    assert taskdb.store_logs(conn, task_id, [(9, "stdout", "gap", 0)], limits) == (7, "")
    # A dropped line past a gap is not remembered: the node resends it after the ack.
    assert taskdb.store_logs(conn, task_id, [(8, "stdout", "d", 0)], limits) == (8, "")
    assert taskdb.store_logs(conn, task_id, [(9, "stdout", "gap", 0)], limits) == (9, "")
    rows = taskdb.logs_after(conn, task_id, 0)
    assert [(r["seq"], r["stream"]) for r in rows] == [(1, "stdout"), (2, "stdout"), (3, "system")]
    assert rows[0]["text"].startswith("a" * 10 + " [line cut")


def test_wait_never_hangs_on_a_task_done_without_an_outcome(tmp_path):
    from hivemind_worker.devmaster import submit as core

    state = StateDir(tmp_path / "m").create()
    c = open_db(state.db)
    task_id = core.submit(state, SubmitRequest(bundle=b"", spec={}))
    taskdb.assign(c, task_id, "node-1")
    taskdb.record_event(c, "node-1", task_id, "done", "already delivered")  # the exit record never arrived
    c.close()
    outcome = core.wait(state, task_id, tmp_path / "out", poll_s=0.02)
    assert outcome.exit_code == 7 and "outcome never reached the master" in outcome.message
