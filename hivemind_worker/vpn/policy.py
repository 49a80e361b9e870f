"""The node's policy for the master's VPN assignment: the master proposes, the node decides.

Everything in an assignment ends up in wg0.conf, which ``sudo hivemind-worker up``
hands to wg-quick as root: a newline smuggled into any value would add a line such
as ``PreUp = ...`` that wg-quick runs. So every value is parsed into a typed value
(keys, ``ipaddress`` objects, a checked host and port) and wg0.conf is only ever
rendered from those. On top of well-formedness, the node's settings limit what the
master may change on the host: routes stay inside the VPN subnet unless
``vpn_allow_full_tunnel``, and the master's DNS servers (wg-quick rewrites the
host's resolver for them) are dropped unless ``vpn_allow_dns``.

Pure functions; reads and writes nothing.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Union

from hivemind_worker.config import Settings
from hivemind_worker.errors import VpnError
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.vpn.keys import decode_key

IpInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IpNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IpAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

MAX_VALUE_CHARS = 256  # longer than any address, key or host name this file needs
MAX_ADDRESSES = 4
MAX_ALLOWED_IPS = 64
MAX_DNS = 4
MAX_KEEPALIVE_S = 3600
# A VPN subnet guessed from AllowedIPs (the node's own address is a /32 or /128) may be
# no wider than this: a master cannot claim a whole private range as "its subnet".
MIN_DERIVED_PREFIX = {4: 16, 6: 48}
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_DEFAULT_ROUTES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class VpnPolicy:
    """What the operator lets the master change on this host (worker.toml)."""

    allow_full_tunnel: bool = False
    allow_dns: bool = False
    subnet: IpNetwork | None = None  # vpn_subnet; None: the node's own address's network

    @classmethod
    def from_settings(cls, settings: Settings) -> "VpnPolicy":
        """The policy; as root, only from a config file no one but root can change
        (enroll and up run as root and would otherwise widen it for whoever wrote it)."""
        for key in ("vpn_allow_full_tunnel", "vpn_allow_dns", "vpn_subnet"):
            origin = settings.where(key)
            if os.geteuid() == 0 and origin != "default" and not origin.startswith("--") and not origin.isupper():
                st = os.stat(origin)
                if st.st_uid != 0 or st.st_mode & 0o022:
                    raise VpnError(f"{origin} sets {key} but is owned by uid {st.st_uid} (mode {st.st_mode & 0o777:04o}); "
                                   f"root trusts only its own files: run: chown root: {origin} && chmod go-w {origin}")
        subnet = ipaddress.ip_network(settings.vpn_subnet) if settings.vpn_subnet else None
        return cls(settings.vpn_allow_full_tunnel, settings.vpn_allow_dns, subnet)


@dataclass(frozen=True)
class Endpoint:
    host: str  # a host name or an IP literal, without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CheckedVpn:
    """An assignment the node accepted: only typed values, safe to render."""

    addresses: tuple[IpInterface, ...]
    server_public_key: str  # canonical base64 of 32 bytes
    endpoint: Endpoint
    allowed_ips: tuple[IpNetwork, ...]
    dns: tuple[IpAddress, ...]
    persistent_keepalive_s: int
    dropped_dns: tuple[IpAddress, ...] = ()  # what the master asked for and the policy ignored


def clean_text(field: str, value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` when it is short printable ASCII; VpnError naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise VpnError(f"{field}: expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise VpnError(f"{field}: {len(value)} characters, more than {limit}")
    bad = next((ch for ch in value if not " " <= ch <= "~"), None)
    if bad is not None:
        raise VpnError(f"{field}: contains the control or non-ASCII character U+{ord(bad):04X} "
                       f"(in {value[:60]!r})")
    return value.strip()


def parse_key(field: str, value: str) -> str:
    try:
        return base64.b64encode(decode_key(clean_text(field, value))).decode()
    except VpnError as exc:
        raise VpnError(f"{field}: {exc}") from None


def parse_interface(field: str, value: str) -> IpInterface:
    text = clean_text(field, value)
    if "%" in text:  # a scope id is free text to ipaddress: it would carry anything
        raise VpnError(f"{field}: {text!r} has an IPv6 scope id (%...), which wg0.conf does not take")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise VpnError(f"{field}: {text!r} is not an IP address with an optional /prefix") from None


def parse_network(field: str, value: str) -> IpNetwork:
    text = clean_text(field, value)
    if "%" in text:
        raise VpnError(f"{field}: {text!r} has an IPv6 scope id (%...), which wg0.conf does not take")
    try:
        return ipaddress.ip_network(text)  # strict: host bits set is a typo worth refusing
    except ValueError:
        raise VpnError(f"{field}: {text!r} is not an IP address or CIDR network like 10.88.0.0/24 "
                       "(host bits clear)") from None


def parse_ip(field: str, value: str) -> IpAddress:
    text = clean_text(field, value)
    if "%" in text:
        raise VpnError(f"{field}: {text!r} has an IPv6 scope id (%...), which is not allowed here")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise VpnError(f"{field}: {text!r} is not an IP address") from None


def parse_endpoint(field: str, value: str) -> Endpoint:
    text = clean_text(field, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise VpnError(f"{field}: {text!r} is not HOST:PORT with a port 1-65535")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise VpnError(f"{field}: {text!r}: unbalanced brackets around the IPv6 address")
        ip = parse_ip(field, host[1:-1])
        if ip.version != 6:
            raise VpnError(f"{field}: {text!r}: only IPv6 addresses go in brackets")
        return Endpoint(str(ip), int(port))
    if ":" in host:
        raise VpnError(f"{field}: {text!r}: IPv6 hosts go in brackets, like [fd00::1]:51820")
    try:
        return Endpoint(str(ipaddress.IPv4Address(host)), int(port))
    except ValueError:
        pass
    if not _HOST.fullmatch(host):
        raise VpnError(f"{field}: {host!r} is neither an IP address nor a host name (letters, digits, '-', '.')")
    return Endpoint(host, int(port))


def _many(field: str, values, limit: int, parse) -> tuple:
    values = tuple(values)
    if len(values) > limit:
        raise VpnError(f"{field}: {len(values)} entries, more than {limit}")
    return tuple(parse(f"{field}[{i}]", v) for i, v in enumerate(values))


def _split(field: str, value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in clean_text(field, value, MAX_VALUE_CHARS * MAX_ADDRESSES).split(",") if p.strip())


def vpn_subnets(addresses: tuple[IpInterface, ...], allowed: tuple[IpNetwork, ...],
                policy: VpnPolicy) -> tuple[IpNetwork, ...]:
    """The VPN subnet(s) routes must stay in: the operator's ``vpn_subnet``, else the
    network of each node address, or for a host address (/32, /128) the AllowedIPs
    entry holding it. A subnet the master so implies must not be public nor wider
    than MIN_DERIVED_PREFIX; failing that, the node's own address is all it gets."""
    if policy.subnet is not None:
        return (policy.subnet,)

    def plausible(net: IpNetwork) -> bool:
        return net.prefixlen >= MIN_DERIVED_PREFIX[net.version] and not net.is_global

    subnets = []
    for iface in addresses:
        if iface.network.prefixlen < iface.max_prefixlen:
            candidates = [iface.network]
        else:
            candidates = [n for n in allowed if n.version == iface.version and iface.ip in n]
        subnets.append(next((n for n in candidates if plausible(n)), ipaddress.ip_network(iface.ip)))
    return tuple(subnets)


def check_routes(addresses: tuple[IpInterface, ...], allowed: tuple[IpNetwork, ...], policy: VpnPolicy,
                 field: str = "allowed_ips") -> None:
    """VpnError unless every route stays in the VPN subnet (or full tunnel is allowed)."""
    if policy.allow_full_tunnel:
        return
    subnets = vpn_subnets(addresses, allowed, policy)
    where = ", ".join(map(str, subnets)) or "none"
    for net in allowed:
        if not any(net.network_address in s and net.broadcast_address in s for s in subnets):  # subnet_of, any version
            what = "takes all of the host's traffic" if net in _DEFAULT_ROUTES else "reaches beyond the VPN subnet"
            raise VpnError(f"{field}: {net} {what} (VPN subnet: {where}); set vpn_allow_full_tunnel = true in worker.toml "
                           f"only if this node should route it through the master"
                           + ("" if policy.subnet else ", or vpn_subnet = \"CIDR\" to name the VPN subnet"))
    if policy.subnet is not None:
        for iface in addresses:
            if not (iface.version == policy.subnet.version and iface.ip in policy.subnet):
                raise VpnError(f"address: {iface} is outside vpn_subnet {policy.subnet}; "
                               "ask the master's operator, or fix vpn_subnet in worker.toml")


def check_assignment(vpn: VpnAssignment, policy: VpnPolicy, complete: bool = True) -> CheckedVpn:
    """Validate the master's assignment against the node's policy. VpnError names the
    field and says what to do; the caller writes nothing when it is raised.

    ``complete=False`` (a master without a WireGuard hub) checks only the fields
    given; the result is then for checking only, not for rendering."""
    try:
        missing = [name for name in ("address", "server_public_key", "endpoint", "allowed_ips")
                   if not getattr(vpn, name)]
        if missing and complete:
            raise VpnError(f"{', '.join(missing)} missing")
        parts = _split("address", vpn.address)
        addresses = _many("address", parts, MAX_ADDRESSES,
                          lambda name, v: parse_interface("address" if len(parts) == 1 else name, v))
        key = parse_key("server_public_key", vpn.server_public_key) if vpn.server_public_key else ""
        endpoint = parse_endpoint("endpoint", vpn.endpoint) if vpn.endpoint else Endpoint("", 0)
        allowed = _many("allowed_ips", vpn.allowed_ips, MAX_ALLOWED_IPS, parse_network)
        dns = _many("dns", vpn.dns, MAX_DNS, parse_ip)
        keepalive = vpn.persistent_keepalive_s
        if not isinstance(keepalive, int) or isinstance(keepalive, bool) or not 0 <= keepalive <= MAX_KEEPALIVE_S:
            raise VpnError(f"persistent_keepalive_s: {keepalive!r} is not 0-{MAX_KEEPALIVE_S} seconds")
        if allowed and not addresses:
            raise VpnError("allowed_ips given without an address for this node")
        check_routes(addresses, allowed, policy)
        if vpn.master_address:
            master = parse_endpoint("master_address", vpn.master_address)
            try:
                ip = ipaddress.ip_address(master.host)
            except ValueError:
                raise VpnError(f"master_address: {master} must be an IP address inside the tunnel") from None
            if not any(ip.version == n.version and ip in n for n in allowed):
                raise VpnError(f"master_address: {master} is not reached through the tunnel (AllowedIPs)")
    except VpnError as exc:
        raise VpnError(f"the master's VPN assignment was refused: {exc}. Nothing was written; "
                       "ask the master's operator to fix it, then enroll again") from None
    return CheckedVpn(
        addresses=addresses, server_public_key=key, endpoint=endpoint, allowed_ips=allowed,
        dns=dns if policy.allow_dns else (), persistent_keepalive_s=keepalive,
        dropped_dns=() if policy.allow_dns else dns,
    )
