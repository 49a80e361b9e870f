"""The journal: rows survive a reopen (a new process on the same file), WAL mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.model import NetworkPolicy, Resources, TaskEvent, TaskRequest, TaskStatus


def clock() -> float:
    return 1000.0


async def test_put_get_reopen_and_ack(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path, clock)
    await j.open()
    req = TaskRequest(
        "t1", image="img@sha256:ab", command=("python3", "-c", "print(1)"), env={"A": "1"},
        resources=Resources(1500, 2**30, 1), priority=3, timeout_s=9.5, network=NetworkPolicy.BRIDGE,
        bundle_size=10, bundle_sha256="ff",
    )
    row = await j.put(TaskRow("t1", req, TaskStatus.ACCEPTED, gpu_ids=("GPU-1", "GPU-2"), created_ms=5))
    assert row.updated_ms == 1_000_000
    await j.put(row.with_(status=TaskStatus.RUNNING, container_id="abc", started_ms=7))
    await j.set_acked_seq("t1", 40)
    await j.set_acked_seq("t1", 30)  # never backwards
    await j.close()

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert path.stat().st_mode & 0o777 == 0o600
    j2 = Journal(path, clock)
    await j2.open()
    got = await j2.get("t1")
    assert got is not None
    assert got.request == req
    assert (got.status, got.container_id, got.gpu_ids, got.acked_seq) == (TaskStatus.RUNNING, "abc", ("GPU-1", "GPU-2"), 40)
    assert [r.task_id for r in await j2.all()] == ["t1"]
    await j2.close()


async def test_prune_keeps_newest_done(tmp_path: Path) -> None:
    t = [0.0]
    j = Journal(tmp_path / "j.db", lambda: t[0])
    await j.open()
    for i in range(5):
        t[0] = i
        await j.put(TaskRow(f"d{i}", TaskRequest(f"d{i}"), TaskStatus.DONE))
    await j.put(TaskRow("live", TaskRequest("live"), TaskStatus.RUNNING))
    await j.prune_done(2)
    assert sorted(r.task_id for r in await j.all()) == ["d3", "d4", "live"]
    await j.close()


async def test_event_outbox_in_one_transaction_acked_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path, clock)
    await j.open()
    row = TaskRow("t", TaskRequest("t", attempt=2), TaskStatus.ACCEPTED)
    row, first = await j.put_with_event(row, TaskEvent("t", TaskStatus.ACCEPTED, time_ms=1))
    assert (first.seq, first.attempt, row.event_seq) == (1, 2, 1)
    row, _ = await j.put_with_event(row.with_(status=TaskStatus.RUNNING), TaskEvent("t", TaskStatus.RUNNING))
    row, ended = await j.put_with_event(
        row.with_(status=TaskStatus.EXITED, exit_code=3), TaskEvent("t", TaskStatus.EXITED, "exited with code 3", 3)
    )
    assert ended.seq == 3
    await j.add_event(TaskEvent("r", TaskStatus.REJECTED, "too large", seq=1, attempt=1, time_ms=9))
    await j.close()

    j = Journal(path, clock)  # a new agent on the same file
    await j.open()
    pending = await j.pending_events()
    assert [(e.task_id, e.seq, e.status) for e in pending] == [
        ("t", 1, TaskStatus.ACCEPTED), ("t", 2, TaskStatus.RUNNING), ("t", 3, TaskStatus.EXITED),
        ("r", 1, TaskStatus.REJECTED),
    ]
    assert (pending[2].reason, pending[2].exit_code, pending[2].attempt) == ("exited with code 3", 3, 2)
    assert (await j.get("t")).event_seq == 3  # the next event continues at 4
    await j.ack_events("t", 1, 3)  # another attempt's ack covers nothing of attempt 2
    assert len(await j.pending_events()) == 4
    await j.ack_events("t", 2, 2)
    assert [(e.task_id, e.seq) for e in await j.pending_events()] == [("t", 3), ("r", 1)]
    await j.prune_done(0)
    await j.put(row.with_(status=TaskStatus.DONE))
    await j.prune_done(0)  # the task row goes; its unacknowledged events stay
    assert await j.get("t") is None and [e.seq for e in await j.pending_events()] == [3, 1]
    await j.close()


async def test_old_journal_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, request TEXT NOT NULL, status TEXT NOT NULL, "
                 "reason TEXT NOT NULL DEFAULT '', exit_code INTEGER NOT NULL DEFAULT 0, container_id TEXT NOT NULL "
                 "DEFAULT '', gpu_ids TEXT NOT NULL DEFAULT '', kill_reason TEXT NOT NULL DEFAULT '', created_ms "
                 "INTEGER NOT NULL DEFAULT 0, started_ms INTEGER NOT NULL DEFAULT 0, ended_ms INTEGER NOT NULL DEFAULT 0, "
                 "acked_seq INTEGER NOT NULL DEFAULT 0, result_path TEXT NOT NULL DEFAULT '', result_size INTEGER NOT "
                 "NULL DEFAULT 0, result_sha256 TEXT NOT NULL DEFAULT '', updated_ms INTEGER NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO tasks (task_id, request, status) VALUES ('o', '{\"task_id\": \"o\"}', 'running')")
    conn.commit()
    conn.close()
    j = Journal(path, clock)
    await j.open()
    old = await j.get("o")
    assert (old.status, old.attempt, old.event_seq) == (TaskStatus.RUNNING, 1, 0)
    _, event = await j.put_with_event(old.with_(status=TaskStatus.EXITED), TaskEvent("o", TaskStatus.EXITED))
    assert event.seq == 1
    await j.close()
