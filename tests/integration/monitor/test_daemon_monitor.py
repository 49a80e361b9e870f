"""The monitor of a real daemon (`hivemind-worker run`, enrolled with a real dev-master
over loopback TLS) in real headless Chromium: charts fill from the daemon's own
telemetry, a task submitted to the dev-master runs in Docker and appears in the
history without a reload. Skips while the daemon does not serve the monitor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.docker
CHROMIUM = os.environ.get("HIVEMIND_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: held open together, so two calls cannot return the same one."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def until(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Stack:
    def __init__(self, base: Path, task_image: str) -> None:
        self.base, self.master_dir = base, base / "master"
        self.master_port, self.monitor_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.monitor_port}"
        self.env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(base / "config"), "HIVEMIND_STATE_DIR": str(base / "state"),
                    "HIVEMIND_MONITOR_PORT": str(self.monitor_port), "HIVEMIND_LOG_FORMAT": "text",
                    "RESOURCE_REPORT_INTERVAL": "1", "HIVEMIND_TASK_IMAGE": task_image}
        self.procs: list[subprocess.Popen] = []

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "hivemind_worker", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{args[:2]}: {done.stderr}"
        return done.stdout.strip()

    def spawn(self, log: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "hivemind_worker", *args], env=self.env,
                                stdout=(self.base / log).open("a"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        addr = f"127.0.0.1:{self.master_port}"
        self.spawn("master.log", "dev-master", "serve", "--state-dir", str(self.master_dir), "--listen", addr)
        until(lambda: socket.socket().connect_ex(("127.0.0.1", self.master_port)) == 0, 30, "the dev-master")
        token = self.cli("dev-master", "token", "create", "--state-dir", str(self.master_dir))
        ca_hash = self.cli("dev-master", "ca-hash", "--state-dir", str(self.master_dir))
        self.cli("enroll", "--master", addr, "--token", token, "--ca-hash", ca_hash)
        self.worker = self.spawn("worker.log", "run")

    def monitor_up(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def stack(tmp_path):
    # The image is built (tests/conftest.py task_image) only once the monitor is known to
    # be served, so the skip below is quick; the daemon needs the image name alone to start.
    s = Stack(tmp_path, os.environ.get("HIVEMIND_TEST_TASK_IMAGE", "hivemind-task-runtime:local"))
    s.start()
    try:
        deadline = time.monotonic() + 12
        while not s.monitor_up():
            if s.worker.poll() is not None:
                pytest.fail("the daemon exited: " + (tmp_path / "worker.log").read_text()[-1500:])
            if time.monotonic() > deadline:
                pytest.skip("the daemon does not serve the monitor yet (AgentParts.monitor not wired)")
            time.sleep(0.2)
        yield s
    finally:
        s.stop()


def test_real_daemon_monitor_in_chromium(stack, request):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Chromium at {CHROMIUM}")
    assert request.getfixturevalue("task_image") == stack.env["HIVEMIND_TASK_IMAGE"]
    sync_api = pytest.importorskip("playwright.sync_api")
    until(lambda: len(httpx.get(stack.url + "/api/telemetry", timeout=2).json()) >= 3, 30, "3 telemetry points")
    status = httpx.get(stack.url + "/api/status", timeout=2).json()
    assert status["enrolled"] and status["session"]["connected"], status
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.goto(stack.url + "/monitor.html")
        page.evaluate("window.__sameDocument = 'yes'")
        for chart in ("cpu", "mem"):
            until(lambda: int(page.get_attribute(f"#chart-{chart}", "data-points") or 0) >= 3, 20, f"{chart} chart")
        assert page.inner_text("#session-value") == "Connected"
        task_id = stack.cli("submit", "--state-dir", str(stack.master_dir), "--cpus", "0.5", "--memory", "128m",
                            "--command", "python3 -c \"import time; [print('step', i, flush=True) or time.sleep(0.5) for i in range(6)]\"")
        task_id = task_id.split()[-1]
        row = f"#history tr[data-task='{task_id}']"
        until(lambda: page.locator(row).count() == 1, 90, f"task {task_id} in the history")
        assert "exited" in page.inner_text(row) or "done" in page.inner_text(row)
        assert page.evaluate("window.__sameDocument") == "yes"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "monitor-daemon.png"), full_page=True)
        browser.close()
    history = httpx.get(stack.url + "/api/history", timeout=2).json()
    assert history[0]["task_id"] == task_id and history[0]["exit_code"] == 0, json.dumps(history)
