"""Fixtures for host integration tests: a pair of network namespaces joined by a
veth (hub 192.0.2.1, node 192.0.2.2), unique per test, always removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class NetnsPair:
    hub: str
    node: str
    hub_ip: str = "192.0.2.1"
    node_ip: str = "192.0.2.2"

    def exec_argv(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def hosts(self, ns: str, entries: dict[str, str]) -> None:
        """/etc/hosts as processes in ``ns`` see it (`ip netns exec` binds /etc/netns/NS/hosts)."""
        path = Path("/etc/netns") / ns / "hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in entries.items()))


@pytest.fixture
def netns_pair():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("wg", "wg-quick", "ip"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (apt-get install wireguard-tools iproute2)")
    tag = uuid.uuid4().hex[:6]
    pair = NetnsPair(hub=f"hmh-{tag}", node=f"hmn-{tag}")
    veth_h, veth_n = f"vh{tag}", f"vn{tag}"
    try:
        _ip("netns", "add", pair.hub)
        _ip("netns", "add", pair.node)
        _ip("link", "add", veth_h, "type", "veth", "peer", "name", veth_n)
        _ip("link", "set", veth_h, "netns", pair.hub)
        _ip("link", "set", veth_n, "netns", pair.node)
        _ip("-n", pair.hub, "addr", "add", f"{pair.hub_ip}/24", "dev", veth_h)
        _ip("-n", pair.node, "addr", "add", f"{pair.node_ip}/24", "dev", veth_n)
        for ns, dev in ((pair.hub, veth_h), (pair.node, veth_n)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.hub, pair.node):
            # Deleting a namespace destroys its interfaces; wireguard-go then exits.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 15)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
