"""Fixtures shared by every test area. Area-specific fixtures live in the area's
own conftest.py (tests/<kind>/<area>/conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TASK_IMAGE = os.environ.get("HIVEMIND_TEST_TASK_IMAGE", "hivemind-task-runtime:local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def devmaster(tmp_path):
    """A real `dev-master serve` on a free loopback port, its own state directory."""
    from tests.support.stack import DevMaster

    master = DevMaster(tmp_path / "master", free_port(), tmp_path / "master.log")
    master.start()
    yield master
    master.stop()


@pytest.fixture
def make_node(tmp_path):
    """make(name, **settings) -> a worker Node (own directories), stopped afterwards."""
    from tests.support.stack import Node

    nodes: list = []

    def make(name: str = "node", **settings):
        node = Node(tmp_path / name, **settings)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
        _remove_task_containers(node)


def _remove_task_containers(node) -> None:
    """A node stopped with a task not yet delivered (handoff) leaves its container for the
    next agent; no agent comes after a test: remove them, or they pile up on the engine."""
    try:
        node_id = node.node_id()
    except (OSError, ValueError, KeyError):
        return  # never enrolled
    if not shutil.which("docker"):
        return
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=hivemind.node_id={node_id}"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)


def cli(*args: str, env: dict | None = None, check: bool = False, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run `hivemind-worker ARGS` as a real subprocess of the installed package."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hivemind_worker", *args],
        env=full_env, capture_output=True, text=True, check=check, timeout=timeout, **kw,
    )


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.fixture(scope="session")
def docker_client():
    if not docker_available():
        pytest.skip("needs a running Docker engine (start dockerd; see README 'Running the tests')")
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def task_image(docker_client) -> str:
    """The default task image, built from Debian packages once and cached by Docker."""
    script = REPO / "images" / "task-runtime" / "build-from-debian.sh"
    subprocess.run(["bash", str(script), TASK_IMAGE], check=True, timeout=900)
    return TASK_IMAGE



# CI runs on a machine with root, Docker and every tool the suite needs: there, a
# skip means a missing install step or a broken fixture, not a missing machine
# feature. Only tests that need a GPU may skip (these machines have none).
EXPECTED_SKIP_WORDS = ("gpu",)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unexpected_skips(config) -> list[str]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    out = []
    for report in (reporter.stats.get("skipped", []) if reporter else []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(word in reason.lower() for word in EXPECTED_SKIP_WORDS):
            out.append(f"{report.nodeid}: {reason}")
    return out


def pytest_sessionfinish(session, exitstatus) -> None:
    if _in_ci() and _unexpected_skips(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    unexpected = _unexpected_skips(config) if _in_ci() else []
    if unexpected:
        terminalreporter.section("unexpected skips (in CI only GPU tests may skip)", red=True)
        for line in unexpected:
            terminalreporter.write_line(line)
