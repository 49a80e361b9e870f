"""Drill 7: 60 tasks at once on this 2-core node, and the master killed and restarted
in the middle. All 60 settle with their own exit codes and every log line once; none
ends `rejected` for being "not now" (busy, full): those wait in the queue.

Host-pressure thresholds stay relaxed as everywhere in the harness: in CI the rest of
the suite shares these two cores, which is real pressure that is not the node's own,
and deferring for it would be right but would make the drill's length the load's.
(Measured here at the defaults, 90 %: with the box at load 10, 37 of 60 tasks kept
being deferred for "CPU 100 % > 90 %" well past 4 minutes.)"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from hivemind_worker.devmaster.layout import StateDir
from hivemind_worker.devmaster.submit import SubmitRequest, submit
from tests.faults.conftest import BACKOFF_MAX_S
from tests.faults.drill import (
    FINAL, assert_agree, assert_healthy, assert_lines_once, connect, db_rows, describe, node_tasks, result_archive,
    task_row,
    wait_connected,
)
from tests.support.stack import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(900)]

TASKS = 60
RUNNING = {"accepted", "fetching", "pulling", "running"}  # the process has not ended
LINES = 10
# Task k prints LINES lines "line k.i", 0.1 s apart, and exits with k % 4.
SCRIPT = ("import os, sys, time\n"
          "k = int(os.environ['K'])\n"
          "for i in range(1, LINES + 1):\n"
          "    print(f'line {k}.{i}', flush=True)\n"
          "    time.sleep(0.1)\n"
          "sys.exit(k % 4)\n").replace("LINES", str(LINES))


def final_count(master, ids) -> int:
    rows = db_rows(master, f"SELECT state FROM tasks WHERE task_id IN ({','.join('?' * len(ids))})", tuple(ids))
    return sum(r["state"] in FINAL for r in rows)


def test_sixty_tasks_with_the_master_restarted(master, make_node, task_image, tmp_path):
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=BACKOFF_MAX_S,
                     task_image=task_image)
    connect(master, node)
    started = time.monotonic()

    # All at once: what `submit` does, without starting 60 CLI processes on two cores.
    state = StateDir(master.state)
    ids = [submit(state, SubmitRequest.build(path=None, command=f"python3 -c \"{SCRIPT}\"", env=[f"K={k}"],
                                             cpus=0.25, memory="64m"))
           for k in range(TASKS)]
    submitted_s = time.monotonic() - started

    # Kill the master once a third has settled, while the node runs tasks; bring it
    # back once the node has finished, unseen, every task it held.
    def middle() -> bool:
        settled = final_count(master, ids)
        return settled >= TASKS // 3 and (settled == TASKS or held(node, ids))

    wait_for(middle, 600, f"{TASKS // 3} tasks settled and more running on the node", interval=0.5)
    master.kill()
    down_at = time.monotonic()
    wait_for(lambda: not held(node, ids), 180, "the node to finish what it held while the master is down", interval=0.5)
    time.sleep(max(0.0, 2 * BACKOFF_MAX_S - (time.monotonic() - down_at)))  # the outage outlasts the backoff cap
    master.start()
    down_s = time.monotonic() - down_at

    try:
        wait_for(lambda: final_count(master, ids) == TASKS, 600, f"all {TASKS} tasks to settle", interval=1)
    except AssertionError as exc:
        rows = [task_row(master, task_id) for task_id in ids]
        raise AssertionError(f"{exc}: {dict(Counter((r['state'], r['outcome'], r['reason']) for r in rows))}") from None
    settle_s = time.monotonic() - started
    problems, kinds = [], Counter()
    for k, task_id in enumerate(ids):
        row = db_rows(master, "SELECT * FROM tasks WHERE task_id=?", (task_id,))[0]
        if (row["state"], row["outcome"], row["exit_code"]) != ("done", "exited", k % 4):
            problems.append(describe(master, task_id))
            kinds[(row["state"], row["outcome"], row["exit_code"], row["reason"])] += 1
    assert not problems, (f"{len(problems)} of {TASKS} did not end as they exited: {dict(kinds)}; first ones:\n"
                          + "\n".join(problems[:5]))
    for k, task_id in enumerate(ids):
        assert_lines_once(master, task_id, [f"line {k}.{i}" for i in range(1, LINES + 1)])
        result_archive(master, task_id)
    print(f"submitted in {submitted_s:.0f} s, master down {down_s:.0f} s, all settled after {settle_s:.0f} s")
    wait_connected(master, node)
    assert_healthy(master, node)
    assert_agree(master, node)


def held(node, ids) -> bool:
    """The node holds one of these tasks whose process has not ended yet."""
    wanted = set(ids)
    return any(t["task_id"] in wanted and t["status"] in RUNNING for t in node_tasks(node)["tasks"])
