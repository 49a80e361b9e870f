"""The egress firewall's rules, read at a glance (the real-engine test is
tests/integration/runtime/test_egress.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivemind_worker.errors import TaskError
from hivemind_worker.runtime.egress import EgressFirewall, EgressPolicy, chain_rules, host_subnets, resolvers

ADDRS = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "203.0.113.7", "prefixlen": 24}]},
    {"ifname": "hm-egress0", "addr_info": [{"family": "inet", "local": "172.20.0.1", "prefixlen": 16}]},
]


class FakeIptables:
    """Records commands; answers `ip addr` and `iptables -C` like a host with no rules."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.rules: set[tuple[str, ...]] = set()

    def __call__(self, argv, stdin=""):
        argv = list(argv)
        self.calls.append((argv, stdin))
        if argv[:2] == ["ip", "-j"]:
            return json.dumps(ADDRS)
        if argv[0] == "iptables" and argv[3] == "-C":
            if tuple(argv[4:]) not in self.rules:
                raise TaskError("Bad rule (does a matching rule exist in that chain?)")
        if argv[0] == "iptables" and argv[3] == "-I":
            self.rules.add((argv[4], *argv[6:]))
        return ""


def test_the_chain_drops_the_neighbourhood_and_lets_dns_to_the_resolver(tmp_path: Path):
    rules = chain_rules(EgressPolicy(), ["203.0.113.0/24"], ["10.255.255.53"])
    assert rules[:2] == [
        "-A HIVEMIND-EGRESS -d 10.255.255.53/32 -p udp --dport 53 -j RETURN",
        "-A HIVEMIND-EGRESS -d 10.255.255.53/32 -p tcp --dport 53 -j RETURN",
    ]
    assert rules[2] == "-A HIVEMIND-EGRESS -m addrtype --dst-type LOCAL -j DROP"  # the host itself
    dropped = [r.split()[3] for r in rules[3:]]
    for net in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "203.0.113.0/24"):
        assert net in dropped
    assert all(r.endswith("-j DROP") for r in rules[2:])


def test_host_subnets_and_resolvers(tmp_path: Path):
    fake = FakeIptables()
    assert host_subnets(fake, skip=("hm-egress0",)) == ["203.0.113.0/24"]
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fe80::1\nsearch lan\n")
    assert resolvers(conf) == ["10.0.0.2"]
    assert resolvers(tmp_path / "missing") == []


def test_ensure_writes_the_chain_atomically_and_inserts_each_jump_once(tmp_path: Path):
    fake = FakeIptables()
    policy = EgressPolicy(resolv_conf=tmp_path / "none", extra_blocked=("203.0.114.0/24",))
    fw = EgressFirewall(policy, run=fake)
    fw.ensure()
    fw.ensure()
    restores = [stdin for argv, stdin in fake.calls if argv[0] == "iptables-restore"]
    assert len(restores) == 2  # rewritten every time: a flushed chain comes back
    assert all("--noflush" in argv for argv, _ in fake.calls if argv[0] == "iptables-restore")
    assert restores[0].startswith("*filter\n:HIVEMIND-EGRESS - [0:0]\n") and restores[0].endswith("COMMIT\n")
    assert "-A HIVEMIND-EGRESS -d 203.0.114.0/24 -j DROP" in restores[0]
    inserts = [argv for argv, _ in fake.calls if argv[0] == "iptables" and argv[3] == "-I"]
    assert sorted((a[4], *a[6:]) for a in inserts) == sorted(
        [("DOCKER-USER", "-i", "hm-egress0", "-j", "HIVEMIND-EGRESS"),
         ("DOCKER-USER", "-i", "hm-egress0", "-o", "wg+", "-j", "DROP"),
         ("INPUT", "-i", "hm-egress0", "-j", "HIVEMIND-EGRESS")]
    )
    assert all(a[5] == "1" for a in inserts)  # at the top, before anyone's ACCEPT


def test_without_permission_ensure_raises_with_the_fix():
    def denied(argv, stdin=""):
        raise TaskError(f"`{argv[0]}` failed: Permission denied (you must be root); run the agent as root")

    with pytest.raises(TaskError, match="Permission denied"):
        EgressFirewall(run=denied).ensure()
