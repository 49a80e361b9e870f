"""Durable task events with the real dev-master: the master is killed while a task
exits and comes back on the same state; its task row ends with the outcome, exit code
and reason the node saw (the exit event was journaled on the node and resent after
the reconnect until the master acknowledged it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.stack import wait_for

pytestmark = [pytest.mark.docker]

# Runs long enough for the master to be killed first, then exits with a code of its own.
TASK = """\
import sys, time
print("started", flush=True)
time.sleep(6)
print("leaving", flush=True)
sys.exit(3)
"""


def task_row(master, task_id: str) -> dict:
    return {t["task_id"]: t for t in json.loads(master.run("tasks", "--json"))}.get(task_id, {})


def test_master_killed_while_a_task_exits_learns_the_outcome(devmaster, make_node, task_image, tmp_path):
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=2)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(lambda: any(r["node_id"] == node_id and r["session"] == "connected" for r in devmaster.nodes()),
             30, "the worker's session")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "main.py").write_text(TASK)
    out = subprocess.run(
        [sys.executable, "-m", "hivemind_worker", "submit", str(bundle), "--image", task_image, "--cpus", "0.5",
         "--memory", "128m", "--state-dir", str(devmaster.state)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    task_id = out.strip().split()[-1]
    wait_for(lambda: task_row(devmaster, task_id).get("state") == "running", 120, "the task to run")

    devmaster.kill()  # the task exits while the master is gone
    wait_for(lambda: "exited with code 3" in node.log.read_text(), 60, "the node to see the exit")
    assert devmaster.proc.poll() is not None
    devmaster.start()

    def settled():
        row = task_row(devmaster, task_id)
        return row if row.get("state") == "done" and row.get("outcome") else None

    row = wait_for(settled, 90, "the master to learn the outcome after it came back")
    assert (row["outcome"], row["exit_code"], row["reason"]) == ("exited", 3, "exited with code 3"), row
    assert node.proc.poll() is None
