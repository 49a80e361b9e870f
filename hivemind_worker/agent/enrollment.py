"""Enrollment: make the node's WireGuard key pair and usage key (Ed25519, signs each
task's usage record), present the token, the node's facts and both public keys to
the master, and store the identity it hands back.

Nothing is written until the master has said yes and the node has accepted every
value it sent (vpn/policy.py: the master proposes, the node decides); then every
file is written atomically with mode 0600, so a refused or interrupted enrollment
leaves no half-written state behind. Who may read which file afterwards is
hostsetup's business (``share_with_service``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hivemind_worker.address import parse_master_address
from hivemind_worker.config import Settings
from hivemind_worker.control.enroll import NodeFacts
from hivemind_worker.control.enroll import enroll as enroll_call
from hivemind_worker.errors import EnrollmentError, VpnError
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.identity import (
    NodeIdentity,
    ca_path,
    identity_path,
    load_identity,
    new_usage_key,
    save_identity,
    usage_key_path,
    wg_key_path,
)
from hivemind_worker.vpn.config import render_wg_conf
from hivemind_worker.vpn.keys import generate_keypair
from hivemind_worker.vpn.policy import VpnPolicy, check_assignment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollResult:
    identity: NodeIdentity
    files: tuple[Path, ...]


def check_wg_config_path(settings: Settings) -> None:
    """Enrollment runs as root and writes wg0.conf where ``wireguard_config_path``
    says: outside the config directory only when whoever set it could write there
    anyway (root's own flag or environment, or a config file only root can change)."""
    if settings.wireguard_config_path is None:
        return
    path = Path(os.path.abspath(settings.wg_config))
    if path.parent == Path(os.path.abspath(settings.config_dir)):
        return
    origin = settings.where("wireguard_config_path")
    if origin.startswith("--") or origin.isupper():  # a flag or a variable: the caller's own
        return
    try:
        st = os.stat(origin)
    except OSError as exc:
        raise EnrollmentError(f"cannot check {origin}, which sets wireguard_config_path: {exc}") from exc
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise EnrollmentError(
            f"{origin} (owner uid {st.st_uid}, mode {st.st_mode & 0o777:04o}) sets wireguard_config_path = {path}, "
            f"outside {settings.config_dir}: whoever can write that file could make enrollment overwrite any file; "
            f"run: chown root: {origin} && chmod 644 {origin}, or remove the setting"
        )


async def enroll_node(settings: Settings, master: str, token: str, ca_hash: str | None, facts: NodeFacts,
                      force: bool = False) -> EnrollResult:
    address = parse_master_address(master)
    if identity_path(settings.config_dir).exists() and not force:
        current = load_identity(settings.config_dir)
        raise EnrollmentError(
            f"this node is already enrolled as {current.node_id} with {current.master}; "
            "pass --force to enroll again (the old identity is replaced)"
        )
    check_wg_config_path(settings)  # before the token is spent
    policy = VpnPolicy.from_settings(settings)
    keys = generate_keypair()
    usage_key, usage_key_file = new_usage_key(usage_key_path(settings.config_dir))
    reply, ca_pem = await enroll_call(address, token.strip(), ca_hash, facts, keys.public_key,
                                      settings.max_message_bytes, usage_public_key=usage_key.public)

    # Judge everything the master sent before writing anything: a refused value
    # must not leave a half node behind.
    vpn = reply.vpn
    try:
        checked = check_assignment(vpn, policy, complete=bool(vpn.server_public_key))
        wg_conf = render_wg_conf(keys.private_key, vpn, policy) if vpn.server_public_key else None
    except VpnError as exc:
        raise EnrollmentError(str(exc)) from None
    if checked.dropped_dns:
        logger.warning("ignoring the master's DNS servers %s (set vpn_allow_dns = true to use them)",
                       ", ".join(map(str, checked.dropped_dns)))
    identity = NodeIdentity(
        node_id=reply.node_id,
        credential=reply.node_credential,
        master=address.target,
        tls=address.tls,
        vpn=vpn,
        report_interval_s=reply.heartbeat_interval_s or int(settings.report_interval_s),
    )

    files: list[Path] = []
    if ca_pem is not None:
        atomic_write(ca_path(settings.config_dir), ca_pem, 0o600)
        files.append(ca_path(settings.config_dir))
    atomic_write(wg_key_path(settings.config_dir), keys.private_key + "\n", 0o600)
    files.append(wg_key_path(settings.config_dir))
    # A new enrollment gets a new usage key: the master holds the public half of this one.
    atomic_write(usage_key.path, usage_key_file, 0o600)
    files.append(usage_key.path)
    if wg_conf is not None:
        atomic_write(settings.wg_config, wg_conf, 0o600)
        files.append(settings.wg_config)
    # The identity goes last: its presence is what "enrolled" means (the unit's
    # ConditionPathExists), so it must only appear once everything else is there.
    save_identity(settings.config_dir, identity)
    files.append(identity_path(settings.config_dir))
    logger.info("enrolled as %s with %s", identity.node_id, identity.master, extra={"node_id": identity.node_id})
    return EnrollResult(identity=identity, files=tuple(files))
