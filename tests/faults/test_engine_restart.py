"""Drill 5: the Docker engine restarts under a running task, on a PRIVATE engine
(tests/support/engine.py; never the shared one other tests use).

Without live-restore the engine stops the container: the task is `lost` with the
cause (an infrastructure failure, not "exited with code 143"). With live-restore the
container keeps running, the node re-attaches, and the task finishes normally with
every log line once."""

from __future__ import annotations

import tarfile
import time

import pytest

from tests.faults.conftest import BACKOFF_MAX_S
from tests.faults.drill import (
    assert_agree, assert_healthy, assert_lines_once, bundle, connect, describe, log_lines, result_archive,
    task_events, wait_final, wait_task,
)
from tests.support.engine import Engine

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(420)]

LINES = 150  # 0.1 s apart: about 15 s of running, the restart lands in the middle


@pytest.fixture(params=[False, True], ids=["plain", "live-restore"])
def engine(request, task_image):
    """A private engine with the task image; drills list it first, so that it goes
    last, after the node that uses it has stopped."""
    with Engine(live_restore=request.param) as e:
        e.load_image(task_image)
        yield e


def started_task(master, make_node, engine, task_image, tmp_path):
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=BACKOFF_MAX_S, task_image=task_image)
    node.env["DOCKER_HOST"] = engine.host
    connect(master, node)
    # --no-retry would hide a re-run; the drill wants this attempt's own outcome, so it
    # reads the first outcome the node reported (task_events), and the row at the end.
    task_id = master.submit(str(bundle(tmp_path)), "--cpus", "0.5", "--memory", "128m",
                            "--env", f"LINES={LINES}", "--env", "PAUSE=0.1", "--env", "EXIT=0")
    wait_task(master, task_id, lambda r: len(log_lines(master, task_id)) >= 20, 120, "to log 20 lines", node)
    return node, task_id


def test_engine_restart_mid_task(engine, master, make_node, task_image, tmp_path):
    node, task_id = started_task(master, make_node, engine, task_image, tmp_path)
    started = time.monotonic()
    engine.restart()
    restart_s = time.monotonic() - started

    if engine.live_restore:
        row = wait_final(master, task_id, 180, node)
        assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), \
            describe(master, task_id, node)
        assert_lines_once(master, task_id, [f"line {i}" for i in range(1, LINES + 1)])
        with tarfile.open(result_archive(master, task_id)) as tar:
            assert tar.extractfile("output/done.txt").read() == f"{LINES} lines".encode()
    else:
        # The first outcome the node reports for this attempt says what happened.
        def first_outcome():
            ends = [e for e in task_events(master, task_id)
                    if e["state"] in ("exited", "failed", "lost", "cancelled", "timed_out", "oom_killed")]
            return ends[0] if ends else None

        wait_task(master, task_id, lambda r: first_outcome() is not None, 180, "to report an outcome", node)
        end = first_outcome()
        assert end["state"] == "lost", f"an engine restart is not the task's failure: {describe(master, task_id, node)}"
        assert "engine" in end["reason"].lower() and not end["reason"].startswith("exited"), end["reason"]
        # The master may run a lost task again (a new attempt); either way it settles.
        row = wait_final(master, task_id, 240, node)
        assert row["state"] in ("done", "lost"), describe(master, task_id, node)
        if row["state"] == "lost":  # what it printed before the engine stopped it, once
            assert_lines_once(master, task_id, [f"line {i}" for i in range(1, LINES + 1)], complete=False)
            assert len(log_lines(master, task_id)) >= 20
        if row["state"] == "done":  # run again as a new attempt: its own lines, all once
            assert row["outcome"] == "exited" and row["exit_code"] == 0, describe(master, task_id, node)
            assert_lines_once(master, task_id, [f"line {i}" for i in range(1, LINES + 1)])
            result_archive(master, task_id)
    assert node.proc.poll() is None, f"the daemon exited across an engine restart of {restart_s:.1f} s"
    assert_healthy(master, node)
    assert_agree(master, node)
