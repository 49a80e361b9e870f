"""Enrollment: make the node's WireGuard key pair, present the token and the node's
facts to the master, and store the identity it hands back.

Nothing is written until the master has said yes, and then every file is written
atomically with mode 0600, so a refused or interrupted enrollment leaves no
half-written state behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hivemind_worker.address import parse_master_address
from hivemind_worker.config import Settings
from hivemind_worker.control.enroll import enroll as enroll_call
from hivemind_worker.errors import EnrollmentError
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.identity import (
    NodeIdentity,
    VpnAssignment,
    ca_path,
    identity_path,
    load_identity,
    save_identity,
    wg_key_path,
)
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.vpn.config import render_wg_conf
from hivemind_worker.vpn.keys import generate_keypair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollResult:
    identity: NodeIdentity
    files: tuple[Path, ...]


def _assignment(vpn: pb.VpnAssignment) -> VpnAssignment:
    return VpnAssignment(
        address=vpn.address,
        server_public_key=vpn.server_public_key,
        endpoint=vpn.endpoint,
        allowed_ips=tuple(vpn.allowed_ips),
        dns=tuple(vpn.dns),
        persistent_keepalive_s=vpn.persistent_keepalive_s,
        master_address=vpn.master_address,
    )


async def enroll_node(settings: Settings, master: str, token: str, ca_hash: str | None, facts: pb.NodeFacts, force: bool = False) -> EnrollResult:
    address = parse_master_address(master)
    if identity_path(settings.config_dir).exists() and not force:
        current = load_identity(settings.config_dir)
        raise EnrollmentError(
            f"this node is already enrolled as {current.node_id} with {current.master}; "
            "pass --force to enroll again (the old identity is replaced)"
        )
    keys = generate_keypair()
    reply, ca_pem = await enroll_call(address, token.strip(), ca_hash, facts, keys.public_key, settings.max_message_bytes)

    vpn = _assignment(reply.vpn)
    identity = NodeIdentity(
        node_id=reply.node_id,
        credential=reply.node_credential,
        master=address.target,
        tls=address.tls,
        vpn=vpn,
        report_interval_s=reply.heartbeat_interval_s or int(settings.report_interval_s),
    )
    # Render before writing anything: a bad assignment must not leave a half node.
    wg_conf = render_wg_conf(keys.private_key, vpn) if vpn.server_public_key else None

    files: list[Path] = []
    if ca_pem is not None:
        atomic_write(ca_path(settings.config_dir), ca_pem, 0o600)
        files.append(ca_path(settings.config_dir))
    atomic_write(wg_key_path(settings.config_dir), keys.private_key + "\n", 0o600)
    files.append(wg_key_path(settings.config_dir))
    if wg_conf is not None:
        atomic_write(settings.wg_config, wg_conf, 0o600)
        files.append(settings.wg_config)
    # The identity goes last: its presence is what "enrolled" means (the unit's
    # ConditionPathExists), so it must only appear once everything else is there.
    save_identity(settings.config_dir, identity)
    files.append(identity_path(settings.config_dir))
    logger.info("enrolled as %s with %s", identity.node_id, identity.master, extra={"node_id": identity.node_id})
    return EnrollResult(identity=identity, files=tuple(files))
