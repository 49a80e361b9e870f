"""The monitor of a real daemon (`hivemind-worker run`, enrolled with a real dev-master
over loopback TLS) in real headless Chromium: charts fill from the daemon's own
telemetry, a task submitted to the dev-master runs in Docker and appears in the
history without a reload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.support.stack import wait_for

pytestmark = pytest.mark.docker
CHROMIUM = os.environ.get("HIVEMIND_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def monitor_up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def node(devmaster, make_node, task_image):
    node = make_node(report_interval_s=1, task_image=task_image)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    wait_for(lambda: node.proc.poll() is not None or monitor_up(node.monitor_url), 30, "the monitor")
    assert node.proc.poll() is None, "the daemon exited: " + node.log.read_text()[-1500:]
    return node


def test_real_daemon_monitor_in_chromium(devmaster, node):
    from playwright import sync_api

    url = node.monitor_url
    wait_for(lambda: len(httpx.get(url + "/api/telemetry", timeout=2).json()) >= 3, 30, "3 telemetry points")
    status = httpx.get(url + "/api/status", timeout=2).json()
    assert status["enrolled"] and status["session"]["connected"], status
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.goto(url + "/monitor.html")
        page.evaluate("window.__sameDocument = 'yes'")
        for chart in ("cpu", "mem"):
            wait_for(lambda: int(page.get_attribute(f"#chart-{chart}", "data-points") or 0) >= 3, 20, f"{chart} chart")
        assert page.inner_text("#session-value") == "Connected"
        task_id = devmaster.submit("--cpus", "0.5", "--memory", "128m", "--command",
                                   "python3 -c \"import time; [print('step', i, flush=True) or time.sleep(0.5) for i in range(6)]\"")
        row = f"#history tr[data-task='{task_id}']"
        wait_for(lambda: page.locator(row).count() == 1, 90, f"task {task_id} in the history")
        assert "exited" in page.inner_text(row) or "done" in page.inner_text(row)
        assert page.evaluate("window.__sameDocument") == "yes"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "monitor-daemon.png"), full_page=True)
        browser.close()
    history = httpx.get(url + "/api/history", timeout=2).json()
    assert history[0]["task_id"] == task_id and history[0]["exit_code"] == 0, json.dumps(history)
