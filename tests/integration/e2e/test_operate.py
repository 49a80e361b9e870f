"""Operating a node: `tasks` lists what it runs, `drain` stops new work without
stopping the daemon (and the master knows), `drain --resume` takes work again."""

from __future__ import annotations

import json

from tests.conftest import cli
from tests.support.stack import wait_for


def test_tasks_drain_and_resume(devmaster, make_node, task_image):
    node = make_node(report_interval_s=1, task_image=task_image)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(lambda: any(r["node_id"] == node_id and r["session"] == "connected" for r in devmaster.nodes()),
             30, "the session")

    long = devmaster.submit("--command", "python3 -c 'import time; time.sleep(8)'", "--cpus", "0.5", "--memory", "128m")
    wait_for(lambda: long in cli("tasks", env=node.env).stdout, 60, "the task in `tasks`")
    listing = json.loads(cli("tasks", "--json", env=node.env).stdout)
    assert [t["task_id"] for t in listing["tasks"]] == [long]

    done = cli("drain", env=node.env)
    assert done.returncode == 0 and "Draining" in done.stdout, done.stderr
    wait_for(lambda: [r for r in devmaster.nodes() if r["node_id"] == node_id and r["draining"]], 10,
             "the master to see the node draining")
    waiting = devmaster.submit("--command", "true", "--cpus", "0.5", "--memory", "128m")

    def state(task_id):
        return {t["task_id"]: t for t in json.loads(devmaster.run("tasks", "--json"))}[task_id]["state"]

    wait_for(lambda: state(long) == "done", 60, "the running task to finish while draining")
    assert state(waiting) == "queued", "a draining node takes no new task"
    assert node.proc.poll() is None, "drain does not stop the daemon"

    assert cli("drain", "--resume", env=node.env).returncode == 0
    wait_for(lambda: state(waiting) == "done", 60, "the queued task to run after resume")


def test_drain_without_a_daemon_says_so(tmp_path):
    done = cli("drain", env={"HIVEMIND_STATE_DIR": str(tmp_path), "HIVEMIND_CONFIG_DIR": str(tmp_path)})
    assert done.returncode != 0
    assert "no running hivemind-worker daemon" in done.stderr and "systemctl start" in done.stderr
