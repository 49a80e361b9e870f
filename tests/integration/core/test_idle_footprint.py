"""A real idle daemon (`hivemind-worker run`, enrolled with a real dev-master over
loopback, connected, reporting, the monitor serving, JSON logs as under systemd) has
not loaded what only other paths need (issue 13: a small idle node).

Seen from outside, in /proc/PID/maps: pydantic's core (only Typer, never a plain
`run`, validates options with it) and cryptography's bindings (a key is made at
enrollment and the usage key's private half is loaded at the first signature). And
in the daemon's own import log (PYTHONPROFILEIMPORTTIME, on its stderr): docker-py
and requests, urllib3, charset_normalizer (~8 MB: the idle node asks the engine its
questions through runtime/engine_probe.py), which load at the first task.
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
                  "cryptography/hazmat/bindings/_rust": "cryptography",
                  "charset_normalizer/md.": "charset_normalizer (requests')"}
DOCKER_PY = ("docker", "requests", "urllib3", "charset_normalizer")


def imported(log: Path) -> set[str]:
    """Top-level packages in the daemon's import log (PYTHONPROFILEIMPORTTIME): a
    package counts by any of its modules (its own line may be missing from the log)."""
    lines = log.read_text(errors="replace").splitlines()
    names = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    return names | {name.split(".")[0] for name in names}


def sampled(url: str) -> bool:
    try:
        status = httpx.get(url + "/api/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return status.get("session", {}).get("connected") and (status.get("usage") or {}).get("time_ms") is not None


def test_idle_daemon_loads_neither_pydantic_cryptography_nor_docker_py(devmaster, make_node, task_image):
    node = make_node(report_interval_s=1, log_format="json")
    node.env["PYTHONPROFILEIMPORTTIME"] = "1"
    assert node.enroll(devmaster).returncode == 0
    node.start()
    wait_for(lambda: node.proc.poll() is not None or sampled(node.monitor_url), 60, "a connected, sampling daemon")
    assert node.proc.poll() is None, "the daemon exited: " + node.log.read_text()[-1500:]
    wait_for(lambda: node.proc.poll() is not None or len(devmaster.nodes()) == 1, 10, "the node at the master")

    maps = Path(f"/proc/{node.proc.pid}/maps").read_text()
    loaded = [what for path, what in NOT_WHILE_IDLE.items() if path in maps]
    rss_mb = psutil.Process(node.proc.pid).memory_info().rss / 2**20
    assert not loaded, f"the idle daemon loaded {loaded} ({rss_mb:.1f} MB resident)"
    assert "hivemind_worker.runtime.engine_probe" in imported(node.log), "no import log: the test sees nothing"
    docker_py = [name for name in DOCKER_PY if name in imported(node.log)]
    assert not docker_py, f"the idle daemon imported {docker_py} ({rss_mb:.1f} MB resident)"
    assert node.proc.poll() is None

    # The first task needs docker-py: it loads then.
    devmaster.submit("--command", "true", "--cpus", "0.5", "--memory", "64m")
    wait_for(lambda: node.proc.poll() is not None or set(DOCKER_PY) <= imported(node.log), 120,
             "docker-py imported for the first task")
    assert node.proc.poll() is None, "the daemon exited: " + node.log.read_text()[-1500:]
