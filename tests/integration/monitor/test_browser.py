"""/monitor.html in real headless Chromium (Debian's /usr/bin/chromium via Playwright):
the charts draw data points, live log lines and a finished task arrive by
Server-Sent Events without a reload, and a screenshot goes to test-artifacts/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HIVEMIND_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[test])")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _points(page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points") or 0)


def _until(page, check, what: str, timeout_ms: int = 10_000) -> None:
    # Polled from Python: the page's CSP forbids the eval behind wait_for_function("...").
    for _ in range(timeout_ms // 100):
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {what}")


def test_monitor_page_live(browser, fake_view, live_monitor):
    fake_view.backfill(minutes=60)
    fake_view.start_task("task-7c1e2f90")
    for i in range(1, 4):
        fake_view.log("task-7c1e2f90", f"epoch {i}/10  loss={0.9 / i:.3f}")
    fake_view.start_task("task-3b8d41aa")
    fake_view.finish_task("task-3b8d41aa", "failed", 2)

    page = browser.new_page(viewport={"width": 1360, "height": 1000})  # under the page's real CSP
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    external: list[str] = []
    page.on("request", lambda req: external.append(req.url) if not req.url.startswith(live_monitor.url) else None)
    page.goto(live_monitor.url + "/")  # redirected to /monitor.html
    assert page.url.endswith("/monitor.html")
    page.evaluate("window.__sameDocument = 'yes'")

    for chart in ("cpu", "mem", "gpu"):
        _until(page, lambda: _points(page, chart) > 0, f"the {chart} chart to draw")
    before = _points(page, "cpu")
    assert 55 <= before <= 60  # the 1 h window: the oldest point may just have left it
    page.wait_for_selector("#live.on", timeout=10_000)
    assert page.inner_text("#session-value") == "Connected"
    assert "A100" in page.inner_text("#gpus-sub")
    assert page.inner_text("#enrolled-value") == "Enrolled"
    page.wait_for_selector("pre.log[data-task='task-7c1e2f90'] >> text=epoch 3/10")
    assert page.locator("#history tr[data-task='task-3b8d41aa']").count() == 1

    # Live: a new log line, a new sample, and a task that finishes - no reload.
    fake_view.log("task-7c1e2f90", "epoch 4/10  loss=0.225")
    fake_view.log("task-7c1e2f90", "warning: learning rate clipped", stream="stderr")
    fake_view.report()
    page.wait_for_selector("pre.log[data-task='task-7c1e2f90'] >> text=epoch 4/10", timeout=10_000)
    _until(page, lambda: _points(page, "cpu") > before, "a new point on the CPU chart")
    fake_view.start_task("task-e91f0b44")
    fake_view.log("task-e91f0b44", "downloading dataset shard 1/4")
    fake_view.report()
    fake_view.finish_task("task-7c1e2f90", "done", 0)
    row = page.wait_for_selector("#history tr[data-task='task-7c1e2f90']", timeout=10_000)
    assert "done" in row.inner_text()
    page.wait_for_selector("pre.log[data-task='task-e91f0b44'] >> text=shard 1/4", timeout=10_000)
    _until(page, lambda: "task-7c1e2f90" not in page.inner_text("#tasks"), "the finished task to leave the running list")
    assert page.evaluate("window.__sameDocument") == "yes", "the page reloaded"
    assert int(page.get_attribute("#chart-earn", "data-points")) >= 1
    assert page.inner_text("#earn-total") != "—"

    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)  # let the last frame paint
    page.screenshot(path=str(ARTIFACTS / "monitor.png"), full_page=True)
    assert not errors, errors
    assert not external, f"the page fetched from outside the node: {external}"
    page.close()
