"""tasks/disk.py: usage by allocated blocks, ENOSPC recognised through any chain of
causes, the admission gate, and the per-task watch's three kill reasons."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from hivemind_worker.errors import HostError, TaskError
from hivemind_worker.tasks import disk
from hivemind_worker.tasks.disk import DiskUsage, DiskWatch, disk_gate, is_disk_full, task_budget, tree_usage

MiB = 1024**2


def test_usage_counts_allocated_blocks_not_apparent_size(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "real.bin").write_bytes(b"x" * (3 * MiB))
    with open(tmp_path / "sparse.bin", "wb") as fh:
        fh.truncate(500 * MiB)  # 500 MiB apparent, nothing allocated
    (tmp_path / "hard").hardlink_to(tmp_path / "sub" / "real.bin")  # counted once
    used = tree_usage(tmp_path)
    assert 3 * MiB <= used < 4 * MiB


def test_usage_scan_is_bounded(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"x" * 8192)
    assert tree_usage(tmp_path, max_entries=10) < tree_usage(tmp_path)


def test_disk_full_is_recognised_through_causes() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.Error as exc:
            raise HostError("task journal x: database or disk is full; is the disk full?") from exc
    except HostError as exc:
        assert is_disk_full(exc)
    assert is_disk_full(TaskError("create container: Docker refused: write /var/lib: no space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(TaskError("exited with code 1"))


def test_gate_defers_below_the_low_water_mark(tmp_path: Path) -> None:
    roomy = Settings(state_dir=tmp_path / "state", disk_min_free_bytes=1, disk_hard_min_free_bytes=0)
    assert disk_gate(roomy)() == ""
    huge = 1 << 60
    tight = Settings(state_dir=tmp_path / "state", disk_min_free_bytes=huge, disk_hard_min_free_bytes=0)
    reason = disk_gate(tight)()
    assert "free on" in reason and "below disk_min_free_bytes" in reason and str(tmp_path) in reason


def test_budget_is_the_setting_or_half_the_room_above_low_water() -> None:
    assert task_budget(Settings(task_disk_limit_bytes=5 * MiB), free=10**12, used=0) == 5 * MiB
    auto = Settings(disk_min_free_bytes=100 * MiB, disk_hard_min_free_bytes=10 * MiB)
    assert task_budget(auto, free=300 * MiB, used=100 * MiB) == 150 * MiB
    assert task_budget(auto, free=50 * MiB, used=0) == disk.AUTO_MIN_BYTES


def watch(tmp_path: Path, settings: Settings, usage: DiskUsage, task_id: str = "t", spool: str = "") -> DiskWatch:
    killed: list[str] = []

    async def kill(reason: str) -> None:
        killed.append(reason)

    w = DiskWatch(task_id, tmp_path / task_id, settings, usage, kill, lambda: spool, check_s=0.01)
    w.killed = killed  # type: ignore[attr-defined]
    (tmp_path / task_id).mkdir(exist_ok=True)
    return w


async def test_watch_kills_over_budget(tmp_path: Path) -> None:
    w = watch(tmp_path, Settings(task_disk_limit_bytes=2 * MiB), DiskUsage())
    assert await w.check() == ""
    (tmp_path / "t" / "big").write_bytes(b"y" * (3 * MiB))
    await asyncio.wait_for(w.run(), 10)
    assert w.killed[0].startswith("disk limit: the task used 3 MiB of its 2 MiB disk budget")


async def test_watch_below_the_hard_mark_stops_only_the_largest_writer(tmp_path: Path) -> None:
    s = Settings(task_disk_limit_bytes=1 << 50, disk_min_free_bytes=1 << 60, disk_hard_min_free_bytes=1 << 59)
    usage = DiskUsage()
    small, big = watch(tmp_path, s, usage, "small"), watch(tmp_path, s, usage, "big")
    (tmp_path / "small" / "f").write_bytes(b"s" * 4096)
    (tmp_path / "big" / "f").write_bytes(b"b" * MiB)
    await big.check()
    assert await small.check() == ""
    reason = await big.check()
    assert reason.startswith("node disk full:") and "largest writer (1 MiB)" in reason


async def test_watch_stops_a_task_whose_spool_cannot_be_written(tmp_path: Path) -> None:
    w = watch(tmp_path, Settings(), DiskUsage(), spool="No space left on device")
    assert (await w.check()).startswith("node disk full: the task's log spool could not be written")


def test_settings_validate_the_marks() -> None:
    from hivemind_worker.config import replace
    from hivemind_worker.errors import ConfigError

    with pytest.raises(ConfigError, match="disk_hard_min_free_bytes"):
        replace(Settings(), disk_hard_min_free_bytes=2 * MiB, disk_min_free_bytes=MiB)
    with pytest.raises(ConfigError, match="task_disk_limit_bytes"):
        replace(Settings(), task_disk_limit_bytes=-1)


async def test_a_task_stopped_for_a_full_node_stays_the_largest_until_forgotten(tmp_path: Path) -> None:
    s = Settings(task_disk_limit_bytes=1 << 50, disk_min_free_bytes=1 << 60, disk_hard_min_free_bytes=1 << 59)
    usage = DiskUsage()
    small, big = watch(tmp_path, s, usage, "small"), watch(tmp_path, s, usage, "big")
    (tmp_path / "small" / "f").write_bytes(b"s" * 4096)
    (tmp_path / "big" / "f").write_bytes(b"b" * MiB)
    await small.check()
    await asyncio.wait_for(big.run(), 10)  # stopped: the largest writer
    assert big.killed[0].startswith("node disk full") and "big" in usage.by_task
    assert await small.check() == ""  # the big one's space is not freed yet: not small's turn
    usage.by_task.pop("big")  # its workspace was freed (supervise.watch forgets it)
    assert (await small.check()).startswith("node disk full")
