"""wg0.conf: render it from a checked VPN assignment, and parse + validate one.

wg-quick runs the file's PreUp/PostUp/PreDown/PostDown lines as root, so the file
is rendered only from typed values (vpn/policy.py) and the parser refuses those
keys, SaveConfig, Table, anything unknown, and any control or non-ASCII character:
`up` never hands wg-quick a file that could run a command. Parse errors name the
file, the line and the field, so the operator can fix the file by hand. This
module reads and writes no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hivemind_worker.errors import VpnError
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.vpn.keys import decode_key
from hivemind_worker.vpn.policy import (
    VpnPolicy,
    check_assignment,
    check_routes,
    parse_endpoint,
    parse_interface,
    parse_ip,
    parse_key,
    parse_network,
)

# The keys this node writes and accepts, by section, in their canonical spelling.
# Deliberately absent: PreUp/PostUp/PreDown/PostDown (commands run as root),
# SaveConfig (wg-quick would write the running state back) and Table (routing).
_INTERFACE_KEYS = ("PrivateKey", "ListenPort", "FwMark", "Address", "DNS", "MTU")
_PEER_KEYS = ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
_REFUSED = ("PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig", "Table")
_CANON = {k.lower(): k for k in _INTERFACE_KEYS + _PEER_KEYS + _REFUSED}


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


def render_wg_conf(private_key: str, assignment: VpnAssignment, policy: VpnPolicy = VpnPolicy()) -> str:
    """The wg-quick config for this node. VpnError when the assignment is incomplete,
    malformed or outside the node's policy; every value written is a typed value."""
    try:
        key = parse_key("PrivateKey", private_key)
    except VpnError as exc:
        raise VpnError(f"node WireGuard private key: {exc}; re-enroll the node") from exc
    vpn = check_assignment(assignment, policy)
    lines = [
        "# Written by hivemind-worker from the master's VPN assignment, as the node's",
        "# policy allows it (vpn_allow_full_tunnel, vpn_allow_dns, vpn_subnet).",
        "[Interface]",
        f"PrivateKey = {key}",
        f"Address = {', '.join(map(str, vpn.addresses))}",
    ]
    if vpn.dns:
        lines.append(f"DNS = {', '.join(map(str, vpn.dns))}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {vpn.server_public_key}",
        f"Endpoint = {vpn.endpoint}",
        f"AllowedIPs = {', '.join(map(str, vpn.allowed_ips))}",
    ]
    if vpn.persistent_keepalive_s:
        lines.append(f"PersistentKeepalive = {int(vpn.persistent_keepalive_s)}")
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

    # wg-quick reads lines split at \n only; any other control character (\r, \x1c,
    # U+2028...) would make this parser and wg-quick see different lines.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        bad = next((ch for ch in raw if not (" " <= ch <= "~" or ch == "\t")), None)
        if bad is not None:
            raise err(lineno, f"contains the control or non-ASCII character U+{ord(bad):04X}")
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
        if canon in _REFUSED:
            raise err(lineno, f"{canon}: refused: "
                      + ("wg-quick runs it as a command as root" if canon.endswith(("Up", "Down")) else
                         "it lets wg-quick change more of the host than the tunnel")
                      + "; hivemind-worker never writes it, so remove the line")
        if section is None:
            raise err(lineno, f"{key}: outside any section (add [Interface] above it)")
        allowed = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        if canon is None or canon not in allowed:
            raise err(lineno, f"{key}: not a valid key in [{section.capitalize()}]")
        try:
            _check_value(canon, value)
        except VpnError as exc:
            raise err(lineno, f"{canon}: {exc}") from None
        if section == "interface":
            if canon in iface and canon not in ("Address", "DNS"):
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


def check_config_policy(config: WgConfig, policy: VpnPolicy) -> None:
    """What `up` checks before wg-quick sees the file: routes inside the VPN subnet and
    no DNS (wg-quick would rewrite the host's resolver) unless the policy allows them."""
    where = f"{Path(config.path).name}"
    if config.dns and not policy.allow_dns:
        raise VpnError(f"{where}: DNS = {', '.join(config.dns)} would make wg-quick rewrite the host's resolver; "
                       f"remove the DNS line from {config.path}, or set vpn_allow_dns = true in worker.toml")
    addresses = tuple(parse_interface("Address", a) for a in config.addresses)
    for peer in config.peers:
        allowed = tuple(parse_network("AllowedIPs", ip) for ip in peer.allowed_ips)
        try:
            check_routes(addresses, allowed, policy, field="AllowedIPs")
        except VpnError as exc:
            raise VpnError(f"{where} line {peer.line}: {exc} (or fix {config.path})") from None


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _check_value(key: str, value: str) -> None:
    if key in ("PrivateKey", "PublicKey", "PresharedKey"):
        decode_key(value)
    elif key in ("Address", "AllowedIPs", "DNS"):
        parts = _split(value)
        if not parts and key != "AllowedIPs":
            raise VpnError("empty (expected an address like 10.88.0.2/32)" if key == "Address" else "empty")
        parse = {"Address": parse_interface, "AllowedIPs": parse_network, "DNS": parse_ip}[key]
        for part in parts:
            try:
                parse(key, part)
            except VpnError as exc:
                raise VpnError(str(exc).removeprefix(f"{key}: ")) from None
    elif key == "Endpoint":
        try:
            parse_endpoint(key, value)
        except VpnError as exc:
            raise VpnError(str(exc).removeprefix(f"{key}: ")) from None
    elif key == "FwMark":
        if value != "off" and not (value.isdigit() or (value.startswith("0x") and value[2:].isalnum())):
            raise VpnError(f"expected a number or off, got {value!r}")
    elif key in ("ListenPort", "MTU", "PersistentKeepalive"):
        if key == "PersistentKeepalive" and value == "off":
            return
        low, high = {"ListenPort": (0, 65535), "MTU": (576, 65535), "PersistentKeepalive": (0, 65535)}[key]
        if not value.isdigit() or not low <= int(value) <= high:
            raise VpnError(f"expected a whole number {low}-{high}, got {value!r}")

