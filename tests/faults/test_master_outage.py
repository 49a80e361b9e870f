"""Drills 1 and 4: the master goes away while a task ends (and while it floods its
log), stays away for several times the node's reconnect backoff cap, and comes back on
the same state directory and port. Nothing the node saw may be lost: the outcome, the
exit code and reason, every log line once, the whole result."""

from __future__ import annotations

import tarfile
import time

import pytest

from tests.faults.conftest import BACKOFF_MAX_S, OUTAGE_S
from tests.faults.drill import (
    assert_agree, assert_healthy, assert_lines_once, bundle, describe, log_lines, node_finished, result_archive,
    wait_connected, wait_final, wait_task,
)
from tests.support.stack import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(600)]


def outage(master, node, task_id, started: float) -> None:
    """The node sees the task end while the master is down; the master stays down
    OUTAGE_S in all (at least twice the node's backoff cap), then comes back."""
    assert OUTAGE_S >= 2 * BACKOFF_MAX_S, "the outage must outlast the reconnect backoff cap twice"
    wait_for(lambda: node_finished(node, task_id), 120, "the node to see the task end while the master is down")
    assert master.proc.poll() is not None
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))  # the fault's duration, not a wait for an event
    master.start()


def test_master_down_while_a_task_exits(master, node, submit_wait, tmp_path):
    waiter = submit_wait(str(bundle(tmp_path)), "--cpus", "0.5", "--memory", "128m",
                         "--env", "LINES=60", "--env", "PAUSE=0.1", "--env", "EXIT=3")
    task_id = waiter.task_id
    wait_task(master, task_id, lambda r: log_lines(master, task_id), 120, "to log its first line", node)
    master.kill()
    outage(master, node, task_id, time.monotonic())

    row = wait_final(master, task_id, 120, node)
    expected = ("done", "exited", 3, "exited with code 3")
    assert (row["state"], row["outcome"], row["exit_code"], row["reason"]) == expected, describe(master, task_id, node)
    code, stdout, stderr = waiter.finish(15)
    assert code == 3, stderr[-2000:]
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, 61)])
    assert [l for l in stdout.splitlines() if l.startswith("line ")] == [f"line {i}" for i in range(1, 61)]
    with tarfile.open(result_archive(master, task_id)) as tar:
        assert tar.extractfile("output/done.txt").read() == b"60 lines"
    wait_connected(master, node)
    assert_healthy(master, node)
    assert_agree(master, node)


FLOOD = 200_000


def test_log_flood_while_the_master_is_down(master, node, submit_wait, tmp_path):
    # The task sleeps first so that the master is surely down before the flood starts.
    waiter = submit_wait(str(bundle(tmp_path, delay=4)), "--cpus", "1", "--memory", "256m",
                         "--env", f"LINES={FLOOD}", "--env", "PAUSE=0", "--env", "EXIT=0")
    task_id = waiter.task_id
    wait_task(master, task_id, lambda r: r["state"] == "running", 120, "to run", node, interval=0.1)
    master.kill()
    started = time.monotonic()
    outage(master, node, task_id, started)

    row = wait_final(master, task_id, 300, node)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), describe(master, task_id, node)
    code, stdout, stderr = waiter.finish(60)
    assert code == 0, stderr[-2000:]
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, FLOOD + 1)])
    result_archive(master, task_id)
    wait_connected(master, node)
    assert_healthy(master, node)
    assert_agree(master, node)
