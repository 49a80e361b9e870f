"""The node's identity on disk: node id, credential, pinned master CA, VPN assignment.

Written once by enrollment (atomically, mode 0600) and read by the daemon, ``up``
and ``doctor``. The WireGuard private key is made here and never leaves the node.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hivemind_worker.errors import ConfigError, NotEnrolledError
from hivemind_worker.fsutil import atomic_write

IDENTITY_FILE = "node.json"
CA_FILE = "master-ca.pem"
WG_KEY_FILE = "wireguard.key"


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
