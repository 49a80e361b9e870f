"""The journal: rows survive a reopen (a new process on the same file), WAL mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.model import NetworkPolicy, Resources, TaskRequest, TaskStatus


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
