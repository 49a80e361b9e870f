"""Drill 7: 60 tasks at once on this 2-core node, and the master killed and restarted
in the middle. All 60 settle with their own exit codes and every log line once; none
ends `rejected` for being "not now" (pressure, busy, full): those wait in the queue.

The node keeps its real pressure thresholds (the harness relaxes them elsewhere): its
own 60 tasks must count as busy, not as host pressure."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.faults.conftest import BACKOFF_MAX_S
from tests.faults.drill import (
    FINAL, assert_agree, assert_healthy, assert_lines_once, connect, db_rows, describe, node_tasks, result_archive,
    wait_connected,
)
from tests.support.stack import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(900)]

TASKS = 60
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
                     task_image=task_image, pressure_cpu_percent=90, pressure_memory_percent=90)
    connect(master, node)
    started = time.monotonic()

    def submit(k: int) -> str:
        return master.submit("--command", f"python3 -c \"{SCRIPT}\"", "--env", f"K={k}", "--cpus", "0.25", "--memory", "64m")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(TASKS)))
    submitted_s = time.monotonic() - started

    # Kill the master once a third has settled; bring it back once the node has
    # finished more tasks on its own.
    wait_for(lambda: final_count(master, ids) >= TASKS // 3, 600, f"{TASKS // 3} tasks to settle", interval=0.5)
    master.kill()
    down_at = time.monotonic()
    finished_before = len(node_history_ids(node, ids))
    wait_for(lambda: len(node_history_ids(node, ids)) >= finished_before + 3, 120,
             "the node to finish tasks while the master is down", interval=0.5)
    master.start()
    down_s = time.monotonic() - down_at

    wait_for(lambda: final_count(master, ids) == TASKS, 900,
             f"all {TASKS} tasks to settle (settled: {final_count(master, ids)})", interval=1)
    settle_s = time.monotonic() - started
    problems = []
    for k, task_id in enumerate(ids):
        row = db_rows(master, "SELECT * FROM tasks WHERE task_id=?", (task_id,))[0]
        if (row["state"], row["outcome"], row["exit_code"]) != ("done", "exited", k % 4):
            problems.append(describe(master, task_id))
    assert not problems, f"{len(problems)} of {TASKS} did not end as they exited: " + "\n".join(problems[:10])
    for k, task_id in enumerate(ids):
        assert_lines_once(master, task_id, [f"line {k}.{i}" for i in range(1, LINES + 1)])
        result_archive(master, task_id)
    print(f"submitted in {submitted_s:.0f} s, master down {down_s:.0f} s, all settled after {settle_s:.0f} s")
    wait_connected(master, node)
    assert_healthy(master, node)
    assert_agree(master, node)


def node_history_ids(node, ids) -> set[str]:
    wanted = set(ids)
    return {h["task_id"] for h in node_tasks(node)["history"] if h["task_id"] in wanted and h.get("finished_ms")}
