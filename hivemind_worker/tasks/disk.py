"""Disk space on the state file system: per-task budgets, watermarks, full disks.

Three promises, one module:

- ``disk_gate(settings)``: the TaskManager's admission check. Below
  ``disk_min_free_bytes`` free on the state file system it says how much is free
  (the node then defers every task: "node low on disk (...)"), else "". One statvfs
  per call.
- ``DiskWatch``: one per running task, ticking every CHECK_S in a thread. It measures
  the task's directory (workspace, output, spool, archive) by allocated blocks
  (``st_blocks``, not apparent size: a sparse file costs what it occupies), at most
  SCAN_MAX_ENTRIES entries per scan (about 1 s; a slow scan spaces the next one out
  so watching costs at most a tenth of a core), and asks to kill the task when it passes its
  budget (``disk limit: ...``), when the file system is below
  ``disk_hard_min_free_bytes`` and this task is the largest writer (``node disk
  full: ...``), or when its log spool could not be written.
- ``is_disk_full(exc)``: ENOSPC anywhere (an OSError, SQLite's "database or disk is
  full", Docker's "no space left on device"), through any chain of causes, so the
  runner ends the affected task instead of retrying a step that cannot succeed.

No Docker and no journal here: the runner acts on what this module measures.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from hivemind_worker.config import Settings

logger = logging.getLogger(__name__)

CHECK_S = 2.0  # how often a running task's directory is measured
SCAN_MAX_ENTRIES = 200_000  # per scan: a task with millions of files costs a bounded walk
AUTO_MIN_BYTES = 16 * 1024**2  # the auto budget never goes below this
MiB = 1024**2
_FULL_WORDS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


def is_disk_full(exc: BaseException | None) -> bool:
    """True if ``exc`` (or anything it was raised from) says the disk is full."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(word in str(exc).lower() for word in _FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on path's file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _nearest(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def tree_usage(root: Path, max_entries: int = SCAN_MAX_ENTRIES) -> int:
    """Bytes allocated under root (st_blocks * 512; hard links once); blocking."""
    total, entries, seen = 0, 0, set()
    stack = [str(root)]
    while stack and entries < max_entries:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue  # vanished, or not ours to read: measured by what we can see
        with it:
            for entry in it:
                entries += 1
                if entries > max_entries:
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


def disk_gate(settings: Settings) -> Callable[[], str]:
    """The TaskManager's ``disk_gate``: "" while the state file system has room."""
    where = settings.state_dir

    def gate() -> str:
        try:
            free = free_bytes(_nearest(where))
        except OSError as exc:
            return f"cannot tell: {where}: {exc.strerror}; check the state directory's file system"
        if free < settings.disk_min_free_bytes:
            return (f"{mib(free)} free on {where}, below disk_min_free_bytes of "
                    f"{mib(settings.disk_min_free_bytes)}; free space there or wait for running tasks")
        return ""

    return gate


def task_budget(settings: Settings, free: int, used: int) -> int:
    """The task's disk budget: the setting, or (auto) half of what was free above the
    low-water mark when it started (``free`` now plus what it already ``used``)."""
    if settings.task_disk_limit_bytes > 0:
        return settings.task_disk_limit_bytes
    return max(AUTO_MIN_BYTES, (free + used - settings.disk_min_free_bytes) // 2)


@dataclass
class DiskUsage:
    """The latest measurement of every running task (shared by their watches), so a
    node below the hard mark stops only its largest writer."""

    by_task: dict[str, int] = field(default_factory=dict)

    def largest(self) -> str:
        return max(self.by_task, key=lambda t: self.by_task[t], default="")


class DiskWatch:
    """Measures one task every CHECK_S until stopped; calls ``kill(reason)`` once."""

    def __init__(self, task_id: str, root: Path, settings: Settings, usage: DiskUsage,
                 kill: Callable[[str], Awaitable[None]], spool_error: Callable[[], str],
                 check_s: float | None = None) -> None:
        self.task_id, self.root, self.settings, self.usage = task_id, root, settings, usage
        self.kill, self.spool_error, self.check_s = kill, spool_error, check_s or CHECK_S
        self.limit = 0
        self.used = 0

    def measure(self) -> tuple[int, int]:
        """(bytes the task uses, bytes free on the file system); blocking."""
        return tree_usage(self.root), free_bytes(_nearest(self.root))

    async def run(self) -> None:
        reason = ""
        try:
            while True:
                started = time.monotonic()
                reason = await self.check()
                if reason:
                    await self.kill(reason)
                    return
                # A huge tree (~1 s per 200k entries) is measured less often: at most
                # a tenth of one core goes to watching a task's disk.
                await asyncio.sleep(max(self.check_s, 10 * (time.monotonic() - started)))
        finally:
            # A task stopped for a full node stays the largest writer until its
            # workspace is freed (the runner forgets it then): nobody else is stopped
            # for the space it still holds.
            if not reason.startswith("node disk full"):
                self.usage.by_task.pop(self.task_id, None)

    async def check(self) -> str:
        """One measurement; the kill reason, or ""."""
        spool = self.spool_error()
        if spool:
            return f"node disk full: the task's log spool could not be written ({spool}); stopped"
        try:
            self.used, free = await asyncio.to_thread(self.measure)
        except OSError as exc:
            logger.warning("task %s: disk usage not measured: %s", self.task_id, exc, extra={"task_id": self.task_id})
            return ""
        if not self.limit:
            self.limit = task_budget(self.settings, free, self.used)
        self.usage.by_task[self.task_id] = self.used
        if self.used > self.limit:
            return (f"disk limit: the task used {mib(self.used)} of its {mib(self.limit)} disk budget "
                    "(task_disk_limit_bytes); killed")
        if free < self.settings.disk_hard_min_free_bytes and self.usage.largest() == self.task_id:
            return (f"node disk full: {mib(free)} free on the state file system (below "
                    f"disk_hard_min_free_bytes, {mib(self.settings.disk_hard_min_free_bytes)}); "
                    f"this task was the largest writer ({mib(self.used)}); killed")
        return ""
