"""Restarts and upgrades keep running tasks (issue 12, part 3), driven on the host with
the real daemon and a real dev-master as subprocesses, as an upgrade does it: the old
agent gets SIGTERM (systemctl restart, the .deb's postinst, install.sh --reinstall),
a new agent starts on the same directories.

- stop_mode "handoff" (the default): the old agent exits at once, the task's container
  keeps running, the new agent re-attaches; the task finishes, its lines arrive once,
  its outcome and result reach the master.
- SIGINT (the package's removal) drains whatever stop_mode says: the task finishes
  before the agent exits.
- stop_mode "drain": SIGTERM waits up to drain_timeout_s, then cancels: bounded.
"""

from __future__ import annotations

import signal
import tarfile
import time

import pytest

from hivemind_worker import __version__
from tests.faults.drill import (
    assert_lines_once, bundle, describe, log_lines, result_archive, task_events, task_row, wait_connected, wait_final,
)
from tests.support.stack import DevMaster, Node, wait_for

pytestmark = [pytest.mark.system, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(300)]


@pytest.fixture
def master(devmaster):
    return devmaster


@pytest.fixture
def node(master, tmp_path, task_image):
    n = Node(tmp_path / "node", report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=2, task_image=task_image)
    assert n.enroll(master).returncode == 0
    yield n
    n.stop()


def _containers(docker_client, task_id: str) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"hivemind.task_id={task_id}"})


def _submit(master: DevMaster, tmp_path, lines: int, pause: float) -> str:
    return master.submit(str(bundle(tmp_path)), "--env", f"LINES={lines}", "--env", f"PAUSE={pause}",
                         "--env", "EXIT=0", "--cpus", "0.5", "--memory", "128m")


def _lines_arrived(master: DevMaster, task_id: str) -> int:
    return sum(1 for r in log_lines(master, task_id) if r["text"].startswith("line "))


def test_sigterm_hands_the_running_task_to_the_next_agent(master, node, tmp_path, docker_client):
    node.start()
    wait_connected(master, node)
    assert any(r["agent_version"] == __version__ for r in master.nodes()), master.nodes()
    task_id = _submit(master, tmp_path, lines=40, pause=0.25)  # ~10 s of output
    wait_for(lambda: _lines_arrived(master, task_id) >= 3, 120, "the task's first lines at the master")

    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.wait(20) == 0
    stopped_in = time.monotonic() - started
    running = [c for c in _containers(docker_client, task_id) if c.status == "running"]
    assert running, f"the task's container must outlive the old agent: {describe(master, task_id)}"
    assert task_row(master, task_id)["state"] not in ("done", "lost"), describe(master, task_id)

    node.start()  # the new agent, on the same identity and state
    row = wait_final(master, task_id, 180, node)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), describe(master, task_id, node)
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, 41)])
    with tarfile.open(result_archive(master, task_id)) as tar:
        assert tar.extractfile("output/done.txt").read() == b"40 lines"
    states = [e["state"] for e in task_events(master, task_id)]
    assert states.count("exited") == 1 and states.count("done") == 1, f"events applied more than once: {states}"
    assert task_row(master, task_id)["attempt"] == 1, "handed off, not retried"
    print(f"old agent stopped in {stopped_in:.1f} s with the task running")


def test_sigint_drains_even_under_handoff(master, node, tmp_path):
    node.start()
    wait_connected(master, node)
    task_id = _submit(master, tmp_path, lines=12, pause=0.25)
    wait_for(lambda: _lines_arrived(master, task_id) >= 1, 120, "the task's first lines at the master")
    node.signal(signal.SIGINT)  # what the package's removal sends
    assert node.wait(90) == 0
    row = task_row(master, task_id)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), describe(master, task_id, node)
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, 13)])
    result_archive(master, task_id)


def test_stop_mode_drain_is_bounded_by_drain_timeout(master, tmp_path, task_image):
    n = Node(tmp_path / "drainer", report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=2,
             task_image=task_image, stop_mode="drain", drain_timeout_s=3)
    assert n.enroll(master).returncode == 0
    try:
        n.start()
        wait_connected(master, n)
        task_id = _submit(master, tmp_path, lines=600, pause=0.5)  # would run 5 minutes
        wait_for(lambda: _lines_arrived(master, task_id) >= 1, 120, "the task's first lines at the master")
        started = time.monotonic()
        n.signal(signal.SIGTERM)
        assert n.wait(60) == 0
        took = time.monotonic() - started
        # drain_timeout_s, then the cancel and a short grace to deliver its outcome.
        assert took < 3 + 30, f"the drain took {took:.1f} s with drain_timeout_s = 3"
        row = wait_final(master, task_id, 60)
        assert row["outcome"] != "exited", describe(master, task_id)
        print(f"drained (cancelled at the deadline) in {took:.1f} s; outcome {row['outcome']}")
    finally:
        n.stop()


def test_stop_mode_is_handoff_or_drain(tmp_path):
    from hivemind_worker.config import load_settings
    from hivemind_worker.errors import ConfigError

    assert load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)}).stop_mode == "handoff"
    (tmp_path / "worker.toml").write_text('stop_mode = "drain"\n')
    assert load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)}).stop_mode == "drain"
    (tmp_path / "worker.toml").write_text('stop_mode = "kill"\n')
    with pytest.raises(ConfigError, match="stop_mode.*handoff"):
        load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)})
