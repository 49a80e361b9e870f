"""The node's identity on disk: node id, credential, pinned master CA, VPN assignment,
and the node's usage key.

Written once by enrollment (atomically, mode 0600) and read by the daemon, ``up``
and ``doctor``. The WireGuard private key is made here and never leaves the node.
The usage key (Ed25519, ``usage.key``) signs each task's usage record; it too is
made on the node and never leaves it: only its public half goes to the master.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind_worker.errors import ConfigError, NotEnrolledError
from hivemind_worker.fsutil import atomic_write

if TYPE_CHECKING:  # cryptography loads only where a key is made or used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger(__name__)
IDENTITY_FILE = "node.json"
CA_FILE = "master-ca.pem"
WG_KEY_FILE = "wireguard.key"
USAGE_KEY_FILE = "usage.key"


@dataclass(frozen=True)
class VpnAssignment:
    address: str = ""
    server_public_key: str = ""
    endpoint: str = ""
    allowed_ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    persistent_keepalive_s: int = 25
    master_address: str = ""


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    credential: str
    master: str  # host:port the node enrolled with
    tls: bool
    vpn: VpnAssignment = field(default_factory=VpnAssignment)
    report_interval_s: int = 30

    def __repr__(self) -> str:  # never print the credential
        return f"NodeIdentity(node_id={self.node_id!r}, master={self.master!r})"


def identity_path(config_dir: Path) -> Path:
    return config_dir / IDENTITY_FILE


def ca_path(config_dir: Path) -> Path:
    return config_dir / CA_FILE


def wg_key_path(config_dir: Path) -> Path:
    return config_dir / WG_KEY_FILE


def save_identity(config_dir: Path, identity: NodeIdentity) -> None:
    data = asdict(identity)
    atomic_write(identity_path(config_dir), json.dumps(data, indent=2) + "\n", 0o600)


def load_identity(config_dir: Path) -> NodeIdentity:
    path = identity_path(config_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotEnrolledError(
            f"this node is not enrolled ({path} is missing); run: hivemind-worker enroll --master HOST:PORT --token TOKEN"
        ) from exc
    except PermissionError as exc:
        raise NotEnrolledError(f"cannot read {path} (permission denied); run as root or as the service user") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); re-enroll the node") from exc
    try:
        vpn = data.pop("vpn", {}) or {}
        vpn["allowed_ips"] = tuple(vpn.get("allowed_ips", ()))
        vpn["dns"] = tuple(vpn.get("dns", ()))
        return NodeIdentity(**data, vpn=VpnAssignment(**vpn))
    except TypeError as exc:
        raise ConfigError(f"{path}: unexpected content ({exc}); re-enroll the node") from exc


def load_ca(config_dir: Path) -> bytes | None:
    path = ca_path(config_dir)
    return path.read_bytes() if path.exists() else None


def usage_key_path(config_dir: Path) -> Path:
    return config_dir / USAGE_KEY_FILE


def new_usage_key() -> tuple["Ed25519PrivateKey", bytes]:
    """A fresh usage key and its PEM (PKCS#8, unencrypted: the file's mode protects it)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    return key, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load_usage_key(path: Path) -> "Ed25519PrivateKey":
    """The key in ``path``; ConfigError (what to do included) when it is a link, can be
    read or changed by others, belongs to someone else, or is not an Ed25519 key.
    Root's and readable by the service group (0640, as node.json) is accepted."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError as exc:
        raise ConfigError(f"cannot read the usage key {path} (permission denied); run as root or the service user, "
                          "or run `sudo hivemind-worker install` (the service group reads it)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot open the usage key {path} ({exc.strerror}); if it is a link, replace it "
                          f"with the file, or remove it and restart the daemon to make a new key") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        mode = st.st_mode & 0o777
        if st.st_uid not in (0, os.geteuid()) or mode & 0o037:
            raise ConfigError(
                f"the usage key {path} is owned by uid {st.st_uid} with mode {mode:04o}: it signs what this node "
                f"reports, so only root (and the service group, read-only) may see it; "
                f"run: chown root: {path} && chmod 600 {path}, then `sudo hivemind-worker install`")
        data = fh.read(64 * 1024)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the usage key {path} is not a readable private key ({exc}); "
                          f"remove it and restart the daemon to make a new one (the master must then "
                          f"learn the new key: re-enroll)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"the usage key {path} is not an Ed25519 key; remove it and re-enroll the node")
    return key


def ensure_usage_key(config_dir: Path, fallback_dir: Path) -> tuple["Ed25519PrivateKey", Path, bool]:
    """The node's usage key as (key, path, made now). Looked for in ``config_dir``, then
    ``fallback_dir`` (the state dir); a node enrolled before usage records has none,
    so one is made: in the config dir where this process may write, else (the
    daemon runs as the service user, the config dir is root's) in the state dir."""
    for where in (config_dir, fallback_dir):
        path = usage_key_path(where)
        if os.path.lexists(path):
            return load_usage_key(path), path, False
    key, pem = new_usage_key()
    path = usage_key_path(config_dir)
    try:
        atomic_write(path, pem, 0o600)
    except OSError:  # root's directory, or read-only to the unit (ProtectSystem)
        path = usage_key_path(fallback_dir)
        atomic_write(path, pem, 0o600)
    logger.info("made this node's usage key %s (the node was enrolled before usage records; "
                "the master learns its public half from the hello)", path)
    return key, path, True
