"""Drill 2: a silent network cut across a task's exit. Every packet to and from the
master's port is dropped on loopback (no RST: the worst case for keepalives) while the
task ends, long enough for the node's keepalive to give the session up; then the rules
are removed. The master must end up with everything the node saw."""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from contextlib import contextmanager

import pytest

from tests.faults.drill import (
    assert_agree, assert_healthy, assert_lines_once, bundle, describe, log_lines, node_finished, result_archive,
    wait_connected, wait_final, wait_task,
)
from tests.support.stack import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(420)]

# The reported case was 60 s; it must outlast the node's gRPC keepalive (30 s + 10 s
# timeout, control/channel.py) so that the node, not TCP, notices the cut.
CUT_S = float(os.environ.get("HIVEMIND_FAULTS_CUT_S", "60"))


def _rules(port: int) -> list[list[str]]:
    return [["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
            ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP"]]


@contextmanager
def silent_cut(port: int):
    """Drop the master's loopback traffic both ways; the rules go whatever happens."""
    added = []
    try:
        for rule in _rules(port):
            subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True, timeout=30)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", *rule], check=True, capture_output=True, timeout=30)


def test_silent_cut_across_a_task_exit(master, node, submit_wait, tmp_path):
    waiter = submit_wait(str(bundle(tmp_path)), "--cpus", "0.5", "--memory", "128m",
                         "--env", "LINES=60", "--env", "PAUSE=0.1", "--env", "EXIT=5")
    task_id = waiter.task_id
    wait_task(master, task_id, lambda r: log_lines(master, task_id), 120, "to log its first line", node)
    with silent_cut(master.port):
        started = time.monotonic()
        wait_for(lambda: node_finished(node, task_id), 120, "the node to see the task end during the cut")
        time.sleep(max(0.0, CUT_S - (time.monotonic() - started)))  # the fault's duration
        assert master.proc.poll() is None

    row = wait_final(master, task_id, 180, node)
    expected = ("done", "exited", 5, "exited with code 5")
    assert (row["state"], row["outcome"], row["exit_code"], row["reason"]) == expected, describe(master, task_id, node)
    code, stdout, stderr = waiter.finish(15)
    assert code == 5, stderr[-2000:]
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, 61)])
    with tarfile.open(result_archive(master, task_id)) as tar:
        assert tar.extractfile("output/done.txt").read() == b"60 lines"
    wait_connected(master, node)
    assert_healthy(master, node)
    assert_agree(master, node)
