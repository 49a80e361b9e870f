"""The honest path of a signed usage record, end to end: a real dev-master, a real
worker daemon, real Docker. A task with known use runs; the dev-master verifies the
record the node signed with the key it enrolled with, stores it with the result and
computes the task's reward from it; the node shows the same record in
`hivemind-worker tasks --json` and in its monitor's history (headless Chromium). (The tampered records
and results are master-verify's tests: tests/integration/devmaster.)"""

from __future__ import annotations

import json

import pytest

from hivemind_worker import usage
from hivemind_worker.identity import load_usage_key
from tests.conftest import cli
from tests.integration.monitor.test_daemon_monitor import ARGS, CHROMIUM
from tests.support.stack import wait_for

pytestmark = pytest.mark.docker
BURN = "python3 -c \"import time; t = time.process_time()\nwhile time.process_time() - t < 2.5: pass\nprint('burnt')\""


def test_a_task_s_signed_record_is_verified_stored_and_rewarded(devmaster, make_node, task_image, tmp_path):
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=2, task_image=task_image)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(lambda: any(r["node_id"] == node_id and r["session"] == "connected" for r in devmaster.nodes()),
             30, "the worker's session")

    task_id = devmaster.submit("--cpus", "1", "--memory", "256m", "--command", BURN)

    def stored():
        return next((t for t in json.loads(devmaster.run("tasks", "--json"))
                     if t["task_id"] == task_id and t["result_complete"]), None)

    task = wait_for(stored, 120, "the result and its record at the dev-master")
    record = task["usage"]
    assert record is not None, "the dev-master stored no verified record: " + node.log.read_text()[-3000:]
    # Verified against the key the node made at enrollment (its public half went with the token).
    signed = usage.SignedRecord(usage.canonical(record), bytes.fromhex(task["usage_signature"]))
    usage.verify(signed, load_usage_key(node.config_dir / "usage.key").public)
    assert (record["node_id"], record["task_id"], record["attempt"]) == (node_id, task_id, 1)
    assert (record["result_sha256"], record["result_bytes"]) == (task["result_sha256"], task["result_size"])
    assert (record["state"], record["exit_code"]) == ("exited", 0)
    assert (record["cpu_limit_millicores"], record["memory_limit_bytes"]) == (1000, 256 * 1024**2)
    assert 1.2 <= record["cpu_seconds"] <= 6.0, record  # the meter may miss the last 1 s
    assert record["image_digest"].startswith("sha256:"), record
    assert task["reward"] == usage.reward(record) and task["reward"] > 0

    # The node shows the record it signed: `tasks --json` (from the running daemon) and the monitor's history.
    def in_history():
        done = cli("tasks", "--json", env=node.env)
        assert done.returncode == 0, done.stderr
        return next((h for h in json.loads(done.stdout)["history"] if h["task_id"] == task_id and h["usage"]), None)

    shown = wait_for(in_history, 30, "the record in the node's task history")
    assert shown["usage_signed"] is True and shown["usage"] == record

    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(node.monitor_url + "/monitor.html")
        row = page.wait_for_selector(f"#history tr[data-task='{task_id}'] td.usage", timeout=20_000)
        text = row.inner_text()
        browser.close()
    assert f"{record['cpu_seconds']:.1f} CPU-s" in text and "peak" in text, text
    assert "GPU-s" not in text  # no GPU given, none shown


def test_a_refused_record_is_warned_once_and_retried_on_the_next_session_not_in_a_loop(devmaster, make_node, task_image):
    """The node signs with a key the master does not hold (its usage.key replaced after
    enrollment): every upload is refused with the reason. The node says so at WARNING
    once for the attempt, and offers the result again only on the next session."""
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=2, task_image=task_image)
    assert node.enroll(devmaster).returncode == 0
    (node.config_dir / "usage.key").unlink()  # the daemon makes another one: not the enrolled key
    node.start()
    node_id = node.node_id()
    wait_for(lambda: any(r["node_id"] == node_id and r["session"] == "connected" for r in devmaster.nodes()),
             30, "the worker's session")
    task_id = devmaster.submit("--cpus", "0.5", "--memory", "128m", "--command", "echo refused")

    def refusals() -> int:
        return devmaster.log.read_text().count("result refused, usage record") if devmaster.log.exists() else 0

    wait_for(lambda: refusals() >= 1, 120, "the dev-master's refusal")
    warned = f"result of {task_id}: usage record refused: "
    wait_for(lambda: warned in node.log.read_text(), 30, "the node's warning")
    devmaster.kill()  # a new session: the result is offered again, and refused again
    devmaster.start()
    wait_for(lambda: refusals() >= 2, 120, "the refusal on the next session")
    assert refusals() == 2, "the node offered the refused result more than once per session"

    def lines(level: str) -> list[str]:
        return [ln for ln in node.log.read_text().splitlines() if warned in ln and f" {level} " in ln]

    wait_for(lambda: len(lines("INFO")) >= 2, 30, "the runner's note of the second refusal")  # one per session
    assert (len(lines("WARNING")), len(lines("INFO"))) == (1, 2), node.log.read_text()[-3000:]
    log = node.log.read_text()
    assert "signature does not verify" in log
    task = next(t for t in json.loads(devmaster.run("tasks", "--json")) if t["task_id"] == task_id)
    assert not task["result_complete"] and task["usage"] is None
