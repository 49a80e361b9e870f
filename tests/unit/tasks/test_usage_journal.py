"""The meter's figures on the journal row: JSON round trip, the meter's own UPDATE,
and a journal of an older agent (no usage columns) migrated on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.model import TaskRequest, TaskStatus
from hivemind_worker.tasks.usage import GpuUse, MeteredUsage

USAGE = MeteredUsage(2.5, 300 << 20, 120 << 20, gpus=(GpuUse(0, "GPU-a", 1.25, 42.5), GpuUse(1, "GPU-b", 0.5, None)),
                     cpu_energy_j=12.0, samples=7, counters=(("nvml:GPU-a", 5), ("rapl:intel-rapl:0", 9)))


def clock() -> float:
    return 1000.0


def test_json_round_trip_leaves_out_what_was_not_reported() -> None:
    assert MeteredUsage.from_json(USAGE.to_json()) == USAGE
    bare = MeteredUsage(1.0, 10, 5)
    assert "cpu_energy_j" not in bare.to_json()
    assert "energy_j" not in GpuUse(1, "GPU-b", 0.5).to_json()
    assert MeteredUsage.from_json(bare.to_json()) == bare


async def test_usage_and_digest_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path, clock)
    await j.open()
    await j.put(TaskRow("t1", TaskRequest("t1"), TaskStatus.RUNNING, usage=USAGE, image_digest="sha256:ab"))
    await j.put(TaskRow("t2", TaskRequest("t2"), TaskStatus.RUNNING, kill_reason="timeout"))
    await j.set_usage("t2", USAGE, "sha256:cd")  # the meter's own columns only
    await j.close()
    j2 = Journal(path, clock)
    await j2.open()
    one, two = await j2.get("t1"), await j2.get("t2")
    assert one is not None and two is not None
    assert (one.usage, one.image_digest) == (USAGE, "sha256:ab")
    assert (two.usage, two.image_digest, two.kill_reason) == (USAGE, "sha256:cd", "timeout")
    await j2.close()


async def test_an_older_journal_gets_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, request TEXT NOT NULL, status TEXT NOT NULL, "
                 "reason TEXT NOT NULL DEFAULT '', exit_code INTEGER NOT NULL DEFAULT 0, "
                 "container_id TEXT NOT NULL DEFAULT '', gpu_ids TEXT NOT NULL DEFAULT '', "
                 "kill_reason TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL DEFAULT 0, "
                 "started_ms INTEGER NOT NULL DEFAULT 0, ended_ms INTEGER NOT NULL DEFAULT 0, "
                 "acked_seq INTEGER NOT NULL DEFAULT 0, result_path TEXT NOT NULL DEFAULT '', "
                 "result_size INTEGER NOT NULL DEFAULT 0, result_sha256 TEXT NOT NULL DEFAULT '', "
                 "updated_ms INTEGER NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO tasks (task_id, request, status) VALUES ('old', '{\"task_id\": \"old\"}', 'running')")
    conn.commit()
    conn.close()
    j = Journal(path, clock)
    await j.open()
    row = await j.get("old")
    assert row is not None and (row.usage, row.image_digest, row.attempt) == (None, "", 1)
    await j.set_usage("old", USAGE, "sha256:ef")
    again = await j.get("old")
    assert again is not None and again.usage == USAGE
    await j.close()
