"""Fixtures of the fault drills: each drill gets its own dev-master (own state
directory and port) and its own node directories, so drills share nothing and run in
parallel (pytest-xdist). Drills that restart the Docker engine get a private one
(engine.py), never the shared engine other tests use."""

from __future__ import annotations

import os

import pytest

from tests.faults.drill import Waiter, connect
from tests.support.stack import Node

# How long the master stays away in the outage drills. The reported case was 150 s;
# CI keeps it as short as still proves the point: several times the node's backoff cap.
OUTAGE_S = float(os.environ.get("HIVEMIND_FAULTS_OUTAGE_S", "30"))
BACKOFF_MAX_S = float(os.environ.get("HIVEMIND_FAULTS_BACKOFF_MAX_S", "5"))


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("fault drills need root (iptables, tmpfs mounts, a private Docker engine)")


@pytest.fixture
def master(devmaster):
    """Each drill's own dev-master (tests/conftest.py)."""
    return devmaster


@pytest.fixture
def node(master, make_node, task_image) -> Node:
    """A node connected to `master`, quick to report and to reconnect."""
    n = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=BACKOFF_MAX_S, task_image=task_image)
    connect(master, n)
    return n


@pytest.fixture
def submit_wait(master, tmp_path):
    """`submit_wait(*args)`: a running `hivemind-worker submit ARGS --wait` (Waiter),
    killed at teardown if the drill failed before it returned."""
    waiters: list[Waiter] = []

    def start(*args: str) -> Waiter:
        waiter = Waiter(master, tmp_path / f"out{len(waiters)}", *args)
        waiters.append(waiter)
        return waiter

    yield start
    for waiter in waiters:
        if waiter.proc.poll() is None:
            waiter.proc.kill()
            waiter.proc.wait(10)
