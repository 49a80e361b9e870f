"""wg0.conf: render it from the master's VPN assignment, and parse + validate one.

Split tunnel by construction: AllowedIPs come from the assignment only, so the
node's default route never goes through the VPN unless the master assigns
0.0.0.0/0. Parse errors name the file, the line and the field, so the operator
can fix the file by hand. This module reads and writes no files.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from hivemind_worker.errors import VpnError
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.vpn.keys import decode_key

# Keys `wg` and `wg-quick` accept, by section, in their canonical spelling.
_INTERFACE_KEYS = (
    "PrivateKey", "ListenPort", "FwMark", "Address", "DNS", "MTU", "Table",
    "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig",
)
_PEER_KEYS = ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
_CANON = {k.lower(): k for k in _INTERFACE_KEYS + _PEER_KEYS}


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str = ""
    persistent_keepalive_s: int = 0
    line: int = 0  # where the [Peer] section starts, for messages


@dataclass(frozen=True)
class WgConfig:
    path: str
    private_key: str = field(repr=False)
    addresses: tuple[str, ...] = ()
    listen_port: int | None = None
    dns: tuple[str, ...] = ()
    mtu: int | None = None
    peers: tuple[WgPeer, ...] = ()

    @property
    def full_tunnel(self) -> bool:
        """True when some peer routes the default route (0.0.0.0/0 or ::/0)."""
        return any(ip in ("0.0.0.0/0", "::/0") for p in self.peers for ip in p.allowed_ips)


def render_wg_conf(private_key: str, assignment: VpnAssignment) -> str:
    """The wg-quick config for this node. Raises VpnError when the assignment is
    incomplete (the master sent no address, peer key, endpoint or AllowedIPs)."""
    try:
        decode_key(private_key)
    except VpnError as exc:
        raise VpnError(f"node WireGuard private key: {exc}; re-enroll the node") from exc
    missing = [
        name
        for name, value in (
            ("address", assignment.address),
            ("server_public_key", assignment.server_public_key),
            ("endpoint", assignment.endpoint),
            ("allowed_ips", assignment.allowed_ips),
        )
        if not value
    ]
    if missing:
        raise VpnError(
            f"the master's VPN assignment lacks {', '.join(missing)}; ask the operator to enable "
            "WireGuard on the master, then re-enroll"
        )
    try:
        decode_key(assignment.server_public_key)
        _check_cidrs(",".join(assignment.allowed_ips))
        _check_cidrs(assignment.address)
        _check_endpoint(assignment.endpoint)
    except VpnError as exc:
        raise VpnError(f"the master's VPN assignment is invalid: {exc}") from exc
    lines = [
        "# Written by hivemind-worker from the master's VPN assignment. Split tunnel:",
        "# only the AllowedIPs below go through the VPN.",
        "[Interface]",
        f"PrivateKey = {private_key}",
        f"Address = {assignment.address}",
    ]
    if assignment.dns:
        lines.append(f"DNS = {', '.join(assignment.dns)}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {assignment.server_public_key}",
        f"Endpoint = {assignment.endpoint}",
        f"AllowedIPs = {', '.join(assignment.allowed_ips)}",
    ]
    if assignment.persistent_keepalive_s:
        lines.append(f"PersistentKeepalive = {assignment.persistent_keepalive_s}")
    return "\n".join(lines) + "\n"


def parse_wg_conf(text: str, path: str | Path = "wg0.conf") -> WgConfig:
    """Parse and validate a wg-quick config. VpnError: '<name> line N: Field: why'."""
    name = Path(path).name
    section: str | None = None
    iface: dict[str, str] = {}
    iface_line = 0
    peers: list[tuple[int, dict[str, tuple[int, str]]]] = []

    def err(lineno: int, what: str) -> VpnError:
        return VpnError(f"{name} line {lineno}: {what}; fix {path} or re-enroll to rewrite it")

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            header = line.strip("[] ").lower()
            if not line.endswith("]") or header not in ("interface", "peer"):
                raise err(lineno, f"unknown section {line!r} (expected [Interface] or [Peer])")
            if header == "interface":
                if iface_line:
                    raise err(lineno, f"second [Interface] section (first at line {iface_line})")
                section, iface_line = "interface", lineno
            else:
                section = "peer"
                peers.append((lineno, {}))
            continue
        if "=" not in line:
            raise err(lineno, f"expected 'Key = value', got {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        canon = _CANON.get(key.lower())
        if section is None:
            raise err(lineno, f"{key}: outside any section (add [Interface] above it)")
        allowed = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        if canon not in allowed:
            raise err(lineno, f"{key}: not a valid key in [{section.capitalize()}]")
        try:
            _check_value(canon, value)
        except VpnError as exc:
            raise err(lineno, f"{canon}: {exc}") from None
        if section == "interface":
            if canon in iface and canon not in ("Address", "DNS", "PreUp", "PostUp", "PreDown", "PostDown"):
                raise err(lineno, f"{canon}: given twice")
            iface[canon] = f"{iface[canon]},{value}" if canon in iface else value
        else:
            fields = peers[-1][1]
            if canon in fields and canon != "AllowedIPs":
                raise err(lineno, f"{canon}: given twice in this [Peer]")
            if canon in fields:
                value = f"{fields[canon][1]},{value}"
            fields[canon] = (lineno, value)

    if not iface_line:
        raise VpnError(f"{name}: no [Interface] section; fix {path} or re-enroll to rewrite it")
    if "PrivateKey" not in iface:
        raise err(iface_line, "PrivateKey: missing in [Interface]")
    if not peers:
        raise VpnError(f"{name}: no [Peer] section; fix {path} or re-enroll to rewrite it")
    parsed_peers = []
    for start, fields in peers:
        if "PublicKey" not in fields:
            raise err(start, "PublicKey: missing in [Peer]")
        parsed_peers.append(
            WgPeer(
                public_key=fields["PublicKey"][1],
                allowed_ips=_split(fields.get("AllowedIPs", (0, ""))[1]),
                endpoint=fields.get("Endpoint", (0, ""))[1],
                persistent_keepalive_s=int(fields.get("PersistentKeepalive", (0, "0"))[1].replace("off", "0")),
                line=start,
            )
        )
    return WgConfig(
        path=str(path),
        private_key=iface["PrivateKey"],
        addresses=_split(iface.get("Address", "")),
        listen_port=int(iface["ListenPort"]) if "ListenPort" in iface else None,
        dns=_split(iface.get("DNS", "")),
        mtu=int(iface["MTU"]) if "MTU" in iface else None,
        peers=tuple(parsed_peers),
    )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _check_value(key: str, value: str) -> None:
    if key in ("PrivateKey", "PublicKey", "PresharedKey"):
        decode_key(value)
    elif key in ("Address", "AllowedIPs"):
        _check_cidrs(value, allow_empty=key == "AllowedIPs")
    elif key == "Endpoint":
        _check_endpoint(value)
    elif key in ("ListenPort", "MTU", "PersistentKeepalive"):
        if key == "PersistentKeepalive" and value == "off":
            return
        low, high = {"ListenPort": (0, 65535), "MTU": (576, 65535), "PersistentKeepalive": (0, 65535)}[key]
        if not value.isdigit() or not low <= int(value) <= high:
            raise VpnError(f"expected a whole number {low}-{high}, got {value!r}")
    elif key == "DNS":
        if not _split(value):
            raise VpnError("empty")


def _check_cidrs(value: str, allow_empty: bool = False) -> None:
    parts = _split(value)
    if not parts and not allow_empty:
        raise VpnError("empty (expected an address like 10.88.0.2/32)")
    for part in parts:
        try:
            ipaddress.ip_interface(part)
        except ValueError as exc:
            raise VpnError(f"{part!r} is not an IP address or CIDR") from exc


def _check_endpoint(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise VpnError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise VpnError(f"{value!r}: IPv6 hosts go in brackets, like [fd00::1]:51820")
