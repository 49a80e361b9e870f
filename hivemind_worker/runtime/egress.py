"""Egress for `bridge` tasks that cannot reach the host's neighbourhood.

A bridge task joins its own Docker network (``hivemind-egress``, bridge interface
``hm-egress0``, no traffic between its containers), never Docker's default bridge.
Packets that enter the host from that bridge pass one iptables chain the node owns
(``HIVEMIND-EGRESS``), jumped to from the engine's ``DOCKER-USER`` chain (forwarded
traffic) and from ``INPUT`` (traffic to the host itself). The chain drops anything
addressed to:

- the host itself (any local address: the bridge gateway, eth0, the VPN address) -
  so services bound to 0.0.0.0 are out of reach;
- link-local 169.254/16 (cloud metadata), RFC 1918, RFC 6598 (100.64/10), loopback,
  0/8, multicast and reserved ranges;
- every subnet the host is directly attached to (its LAN, even a public one);
- ``extra_blocked`` (the VPN subnet when it is not a private range);

and ``DOCKER-USER`` drops anything leaving through a WireGuard interface (``wg+``).
The one exception is DNS (port 53) to the host's own resolvers, because Docker's
embedded DNS forwards a task's queries from the task's network namespace and a LAN
resolver would otherwise make every name unresolvable. Everything else (the public
internet) passes to Docker's usual rules.

The chain is rewritten atomically (``iptables-restore --noflush``) on every
``ensure()``, so it is restored after a reboot, a flush or a change of the host's
addresses by the next bridge task; the jumps are checked and inserted at the top.
It is never left half-done silently: any failure raises, and the task does not run
(fail closed). Needs root (or CAP_NET_ADMIN). Only IPv4: the egress network has no
IPv6, so a task has no IPv6 route.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hivemind_worker.errors import TaskError
from hivemind_worker.runtime.spec import EGRESS_NETWORK, LABEL_MANAGED

logger = logging.getLogger(__name__)

BLOCKED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
)
FIX = ('run the agent as root (or with CAP_NET_ADMIN) so it can install the egress firewall, '
       'or keep task_networks = "none"')


@dataclass(frozen=True)
class EgressPolicy:
    """Names of what the node owns, and what it blocks. Tests use their own names."""

    network: str = EGRESS_NETWORK
    bridge: str = "hm-egress0"  # at most 15 characters (an interface name)
    chain: str = "HIVEMIND-EGRESS"
    blocked: tuple[str, ...] = BLOCKED
    extra_blocked: tuple[str, ...] = ()
    tunnels: str = "wg+"  # iptables interface pattern of the VPN
    resolv_conf: Path = Path("/etc/resolv.conf")

    def jumps(self) -> list[tuple[str, list[str]]]:
        """(chain, rule) pairs that send the bridge's packets through our chain."""
        return [
            ("DOCKER-USER", ["-i", self.bridge, "-j", self.chain]),
            ("DOCKER-USER", ["-i", self.bridge, "-o", self.tunnels, "-j", "DROP"]),
            ("INPUT", ["-i", self.bridge, "-j", self.chain]),
        ]


Runner = Callable[[Sequence[str], str], str]  # (argv, stdin) -> stdout; raises TaskError


def run_command(argv: Sequence[str], stdin: str = "") -> str:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TaskError(f"`{argv[0]}` could not run ({exc}); {FIX}") from exc
    if done.returncode != 0:
        raise TaskError(f"`{' '.join(argv)}` failed: {done.stderr.strip()[:300]}; {FIX}")
    return done.stdout


def host_subnets(run: Runner = run_command, skip: tuple[str, ...] = ()) -> list[str]:
    """The IPv4 subnets of the host's interfaces (but loopback and ``skip``)."""
    found = []
    for link in json.loads(run(["ip", "-j", "-4", "addr", "show"], "") or "[]"):
        if link.get("ifname") == "lo" or link.get("ifname") in skip:
            continue
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                found.append(str(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)))
    return sorted(set(found))


def resolvers(resolv_conf: Path) -> list[str]:
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    found = []
    for match in re.finditer(r"^\s*nameserver\s+(\S+)", text, re.M):
        try:
            ip = ipaddress.ip_address(match.group(1))
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback:
            found.append(str(ip))
    return found


def chain_rules(policy: EgressPolicy, subnets: Sequence[str], dns: Sequence[str]) -> list[str]:
    """The chain's content, in iptables-restore syntax."""
    c = policy.chain
    rules = [f"-A {c} -d {ip}/32 -p {proto} --dport 53 -j RETURN" for ip in dns for proto in ("udp", "tcp")]
    rules.append(f"-A {c} -m addrtype --dst-type LOCAL -j DROP")
    for net in (*policy.blocked, *policy.extra_blocked, *subnets):
        rules.append(f"-A {c} -d {net} -j DROP")
    return rules


class EgressFirewall:
    """Installs, checks and removes the rules above (blocking: call it in a thread)."""

    def __init__(self, policy: EgressPolicy = EgressPolicy(), run: Runner = run_command) -> None:
        self.policy = policy
        self._run = run

    def expected(self) -> list[str]:
        subnets = host_subnets(self._run, skip=(self.policy.bridge,))
        return chain_rules(self.policy, subnets, resolvers(self.policy.resolv_conf))

    def ensure(self) -> None:
        """Write the chain (atomically) and insert any missing jump. Idempotent."""
        p = self.policy
        body = "\n".join(["*filter", f":{p.chain} - [0:0]", *self.expected(), "COMMIT", ""])
        self._run(["iptables-restore", "-w", "5", "--noflush"], body)
        for chain, rule in reversed(p.jumps()):
            if not self._has(chain, rule):
                self._run(["iptables", "-w", "5", "-I", chain, "1", *rule], "")

    def missing(self) -> list[str]:
        """What is not in force, in words; [] when the firewall is complete."""
        p = self.policy
        gaps = [f"{chain}: {' '.join(rule)}" for chain, rule in p.jumps() if not self._has(chain, rule)]
        try:
            have = {line.strip() for line in self._run(["iptables", "-w", "5", "-S", p.chain], "").splitlines()}
        except TaskError:
            return gaps + [f"chain {p.chain} is missing"]
        want = self.expected()
        gaps += [f"{p.chain}: {rule}" for rule in want if _canonical(rule) not in {_canonical(h) for h in have}]
        return gaps

    def remove(self) -> None:
        p = self.policy
        for chain, rule in p.jumps():
            while self._has(chain, rule):
                self._run(["iptables", "-w", "5", "-D", chain, *rule], "")
        for op in ("-F", "-X"):
            try:
                self._run(["iptables", "-w", "5", op, p.chain], "")
            except TaskError:
                pass  # already gone

    def _has(self, chain: str, rule: list[str]) -> bool:
        try:
            self._run(["iptables", "-w", "5", "-C", chain, *rule], "")
            return True
        except TaskError as exc:
            if "Permission denied" in str(exc) or "you must be root" in str(exc):
                raise
            return False


def _canonical(rule: str) -> str:
    # iptables -S prints "-p udp -m udp --dport 53" for "-p udp --dport 53".
    return re.sub(r"-m (udp|tcp) ", "", rule)


def ensure_network(client: Any, policy: EgressPolicy) -> str:
    """The egress network (created if missing); its id. Blocking (docker-py)."""
    import docker

    options = {
        "com.docker.network.bridge.name": policy.bridge,
        "com.docker.network.bridge.enable_icc": "false",  # tasks do not reach each other
        "com.docker.network.bridge.enable_ip_masquerade": "true",
    }
    for attempt in range(2):
        found = client.networks.list(names=[policy.network])
        found = [n for n in found if n.name == policy.network]
        if found:
            attrs = client.api.inspect_network(found[0].id)
            have = (attrs.get("Options") or {}).get("com.docker.network.bridge.name")
            if attrs.get("Driver") != "bridge" or have != policy.bridge:
                raise TaskError(
                    f"Docker network {policy.network} exists but is not the node's egress network (driver "
                    f"{attrs.get('Driver')}, bridge {have}); remove it with `docker network rm {policy.network}`"
                )
            return found[0].id
        try:
            network = client.networks.create(
                policy.network, driver="bridge", options=options, labels={LABEL_MANAGED: "1"},
                check_duplicate=True,
            )
            logger.info("created Docker network %s (bridge %s) for bridge tasks", policy.network, policy.bridge)
            return network.id
        except docker.errors.APIError as exc:
            if attempt or exc.status_code != 409:
                raise
    raise TaskError(f"could not create Docker network {policy.network}")
