"""A real idle daemon (`hivemind-worker run`, enrolled with a real dev-master over
loopback, connected, reporting, the monitor serving, JSON logs as under systemd) has
not loaded what only other paths need (issue 13: a small idle node).

Seen from outside, in /proc/PID/maps: pydantic's core (only Typer, never a plain
`run`, validates options with it) and cryptography's bindings (a key is made at
enrollment and the usage key's private half is loaded at the first signature).
bench/footprint.py measures the resident memory; tests/unit/core/test_footprint.py
checks the pure-Python modules in-process."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.stack import wait_for

pytestmark = pytest.mark.docker

NOT_WHILE_IDLE = {"pydantic_core/_pydantic_core": "pydantic (Typer's option validation)",
                  "cryptography/hazmat/bindings/_rust": "cryptography"}


def sampled(url: str) -> bool:
    try:
        status = httpx.get(url + "/api/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return status.get("session", {}).get("connected") and (status.get("usage") or {}).get("time_ms") is not None


def test_idle_daemon_maps_neither_pydantic_nor_cryptography(devmaster, make_node):
    node = make_node(report_interval_s=1, log_format="json")
    assert node.enroll(devmaster).returncode == 0
    node.start()
    wait_for(lambda: node.proc.poll() is not None or sampled(node.monitor_url), 60, "a connected, sampling daemon")
    assert node.proc.poll() is None, "the daemon exited: " + node.log.read_text()[-1500:]
    wait_for(lambda: node.proc.poll() is not None or len(devmaster.nodes()) == 1, 10, "the node at the master")

    maps = Path(f"/proc/{node.proc.pid}/maps").read_text()
    loaded = [what for path, what in NOT_WHILE_IDLE.items() if path in maps]
    rss_mb = psutil.Process(node.proc.pid).memory_info().rss / 2**20
    assert not loaded, f"the idle daemon loaded {loaded} ({rss_mb:.1f} MB resident)"
    assert node.proc.poll() is None
