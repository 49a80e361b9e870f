"""The dev-master's log store: the batch fast path stores exactly what the per-line loop does."""

from __future__ import annotations

import random

import pytest

from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.db import open_db

FAST = "SELECT 1 FROM logs WHERE task_id=? AND seq>? LIMIT 1"  # only the fast path asks this


def _stores(tmp_path, name):
    conn = open_db(tmp_path / f"{name}.db")
    return conn, taskdb.create_task(conn, {}, task_id="task-1")


def _state(conn, task_id):
    rows = [tuple(r) for r in conn.execute("SELECT * FROM logs ORDER BY task_id, seq")]
    counters = tuple(conn.execute("SELECT log_lines, log_bytes FROM tasks WHERE task_id=?", (task_id,)).fetchone())
    return rows, counters, taskdb.contiguous_seq(conn, task_id)


def _batch(rng, mark):
    """Lines the node might send: the next ones, a resend of acknowledged ones, or past a gap."""
    start = max(1, mark + 1 + rng.choice([0, 0, 0, -rng.randint(1, 8), rng.randint(1, 5)]))
    seqs = list(range(start, start + rng.choice([rng.randint(1, 25), rng.randint(190, 450)])))  # 200 a statement
    if rng.random() < 0.1:
        seqs.append(rng.choice(seqs))  # the same line twice in one batch
    texts = ["", "x", "ab" * 3, "é€😀"]

    def text(s):  # now and then one over max_line_bytes ("near")
        return f"{s}:" + ("y" * 30 if rng.random() < 0.003 else rng.choice(texts))
    return [(s, rng.choice(["stdout", "stderr"]), text(s), s * 10) for s in seqs]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("limits", [taskdb.LogLimits(), taskdb.LogLimits(max_lines=3000, max_bytes=40_000, max_line_bytes=20)],
                         ids=["far", "near"])
def test_fast_path_stores_what_the_loop_stores(tmp_path, seed, limits):
    # The same batches, in order (fast path where it applies) and reversed (never fast:
    # the loop sorts them), give the same answers and the same rows, counters and mark.
    (a, task_id), (b, _) = _stores(tmp_path, "a"), _stores(tmp_path, "b")
    fast: list[str] = []
    a.set_trace_callback(lambda sql: fast.append(sql) if "LIMIT 1" in sql and "FROM logs" in sql else None)
    rng, mark = random.Random(seed), 0
    for _ in range(60):
        lines = _batch(rng, mark)
        answer = taskdb.store_logs(a, task_id, lines, limits)
        assert answer == taskdb.store_logs(b, task_id, lines[::-1], limits)
        mark = answer[0]
    assert _state(a, task_id) == _state(b, task_id)
    assert fast, "the in-order batches never took the fast path"


def test_fast_path_keeps_the_limits_and_the_resends(tmp_path):
    conn, task_id = _stores(tmp_path, "a")
    limits = taskdb.LogLimits(max_lines=10, max_bytes=10_000, max_line_bytes=100)
    # Lines past a gap first; the resend from the mark counts each of them once.
    assert taskdb.store_logs(conn, task_id, [(s, "stdout", "l", 0) for s in (4, 5)], limits) == (0, "")
    assert taskdb.store_logs(conn, task_id, [(s, "stdout", "l", 0) for s in range(1, 6)], limits) == (5, "")
    assert _state(conn, task_id)[1] == (5, 5)
    # Ten lines in all reach the line limit: the tenth says why the rest is missing.
    mark, note = taskdb.store_logs(conn, task_id, [(s, "stdout", "l", 0) for s in range(6, 11)], limits)
    assert mark == 10 and "log limit reached at line 10" in note
    assert taskdb.store_logs(conn, task_id, [(s, "stdout", "l", 0) for s in (11, 12)], limits) == (12, "")
    rows = taskdb.logs_after(conn, task_id, 0)
    assert [r["seq"] for r in rows] == list(range(1, 11)) and rows[-1]["stream"] == "system"


def test_fast_path_leaves_the_exact_byte_limit_to_the_loop(tmp_path):
    # At exactly max_bytes the loop drops what follows, even an empty line.
    conn, task_id = _stores(tmp_path, "a")
    limits = taskdb.LogLimits(max_lines=100, max_bytes=20, max_line_bytes=100)
    lines = [(1, "stdout", "a" * 10, 0), (2, "stdout", "b" * 10, 0), (3, "stdout", "", 0)]
    assert taskdb.store_logs(conn, task_id, lines, limits) == (3, "")
    assert [r["seq"] for r in taskdb.logs_after(conn, task_id, 0)] == [1, 2]
    assert _state(conn, task_id)[1] == (2, 20)
