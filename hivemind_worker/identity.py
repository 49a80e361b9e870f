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

    from hivemind_worker.usage import SignedRecord

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


class UsageKey:
    """The node's usage key. Its public half is known at once (the file's first line,
    for the hello); the private half is loaded at the first signature, so an idle
    daemon never loads cryptography (about 10 MB). Safe to use from threads."""

    def __init__(self, path: Path, public: bytes, private: "Ed25519PrivateKey | None" = None) -> None:
        self.path, self.public, self._private = path, public, private

    def __repr__(self) -> str:  # never print the key
        return f"UsageKey({str(self.path)!r})"

    def private(self) -> "Ed25519PrivateKey":
        if self._private is None:
            key = _private_key(self.path, _read_private(self.path))
            if _public_bytes(key) != self.public:
                raise ConfigError(f"the usage key {self.path} does not match the public key on its first line; "
                                  "the file was edited: remove it, restart the daemon and re-enroll the node")
            self._private = key
        return self._private

    def sign(self, record: dict) -> "SignedRecord":
        from hivemind_worker.usage import sign
        return sign(record, self.private())


def new_usage_key(path: Path) -> tuple[UsageKey, bytes]:
    """A fresh key to live at ``path`` and the file's bytes (write them 0600): its public
    half in hex on the first line (text before the PEM block, which PEM readers skip),
    then the private key as PKCS#8 PEM, unencrypted: the file's mode protects it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    public = _public_bytes(key)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return UsageKey(path, public, key), f"{_PUBLIC_TAG}{public.hex()}\n".encode() + pem


def load_usage_key(path: Path) -> UsageKey:
    """The key in ``path``; ConfigError (what to do included) when it is a link, can be
    read or changed by others, belongs to someone else, or is unreadable. Root's and
    readable by the service group (0640, as node.json) is accepted."""
    data = _read_private(path)
    first = data.split(b"\n", 1)[0].decode("ascii", "replace")
    if first.startswith(_PUBLIC_TAG):
        try:
            public = bytes.fromhex(first[len(_PUBLIC_TAG):].strip())
        except ValueError:
            public = b""
        if len(public) == 32:
            return UsageKey(path, public)
    key = _private_key(path, data)  # a key without the public line (made by hand)
    return UsageKey(path, _public_bytes(key), key)


def ensure_usage_key(config_dir: Path, fallback_dir: Path) -> tuple[UsageKey, bool]:
    """The node's usage key and whether it was made now. Looked for in ``config_dir``,
    then ``fallback_dir`` (the state dir); a node enrolled before usage records has
    none, so one is made: in the config dir where this process may write, else (the
    daemon runs as the service user, the config dir is root's) in the state dir."""
    for where in (config_dir, fallback_dir):
        path = usage_key_path(where)
        if os.path.lexists(path):
            return load_usage_key(path), False
    key, data = new_usage_key(usage_key_path(config_dir))
    try:
        atomic_write(key.path, data, 0o600)
    except OSError:  # root's directory, or read-only to the unit (ProtectSystem)
        key.path = usage_key_path(fallback_dir)
        atomic_write(key.path, data, 0o600)
    logger.info("made this node's usage key %s (the node was enrolled before usage records; "
                "the master learns its public half from the hello)", key.path)
    return key, True


_PUBLIC_TAG = "public: "


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError as exc:
        raise ConfigError(f"cannot read the usage key {path} (permission denied); run as root or the service user, "
                          "or run `sudo hivemind-worker install` (the service group reads it)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot open the usage key {path} ({exc.strerror}); if it is a link, replace it "
                          f"with the file itself") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        mode = st.st_mode & 0o777
        if st.st_uid not in (0, os.geteuid()) or mode & 0o037:
            raise ConfigError(
                f"the usage key {path} is owned by uid {st.st_uid} with mode {mode:04o}: it signs what this node "
                f"reports, so only root (and the service group, read-only) may see it; "
                f"run: chown root: {path} && chmod 600 {path}, then `sudo hivemind-worker install`")
        return fh.read(64 * 1024)


def _private_key(path: Path, data: bytes) -> "Ed25519PrivateKey":
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the usage key {path} is not a readable private key ({exc}); "
                          "remove it, restart the daemon and re-enroll the node (the master keeps the first key "
                          "it learns)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"the usage key {path} is not an Ed25519 key; remove it and re-enroll the node")
    return key


def _public_bytes(key: "Ed25519PrivateKey") -> bytes:
    from hivemind_worker.usage import public_key_bytes
    return public_key_bytes(key)
