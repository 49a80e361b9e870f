"""LocalTaskHost: a TaskHost without a master.

Bundles come from local zip files, and events, log lines and result archives are
kept here (result archives copied into a directory). It acknowledges what it
receives the way a master would (optionally), so a TaskManager can run a task end
to end on one machine: the tests and the benches use it (a testing module, outside
the shipped package; mypy checks it against tasks.model.TaskHost). It
checks what a master checks: log seqs contiguous from 1 (duplicates are counted
and dropped, as the master dedups by seq), results received once.

It must not grow into a master: no scheduling, no network.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hivemind_worker.errors import BundleError
from hivemind_worker.fsutil import sha256_file as sha256_file  # the tests import it from here too
from hivemind_worker.tasks.model import LogChunk, LogRecord, TaskEvent, TaskHost, TaskStatus
from hivemind_worker.tasks.result import read_usage
from hivemind_worker.usage import SignedRecord, sign


class LocalTaskHost:
    def __init__(
        self,
        results_dir: Path,
        bundles: dict[str, Path] | None = None,
        *,
        auto_ack: bool = True,
        keep_lines: bool = True,
    ) -> None:
        self.results_dir = results_dir
        self.bundles = dict(bundles or {})
        self.auto_ack = auto_ack
        self.keep_lines = keep_lines
        self.manager: Any = None  # set to the TaskManager to acknowledge to
        self.events: list[TaskEvent] = []
        self.lines: dict[str, list[LogRecord]] = {}
        self.last_seq: dict[str, int] = {}
        self.bytes_received: dict[str, int] = {}
        self.duplicates = 0
        self.gaps: list[tuple[str, int, int]] = []  # (task, expected seq, got seq)
        self.results: dict[str, Path] = {}
        self.uploads: dict[str, int] = {}  # task -> how many times uploaded
        self.usage_key = Ed25519PrivateKey.generate()  # signs usage records, as the node's usage.key
        self.usage: dict[str, SignedRecord | None] = {}  # task -> the signed record its last upload carried
        self.online = True  # False: every call fails, as with a dropped session
        self.refused = 0  # calls that failed because it was offline
        self._changed = asyncio.Condition()

    def _check_online(self) -> None:
        if not self.online:
            self.refused += 1
            raise ConnectionError("no session (LocalTaskHost offline)")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def emit_event(self, event: TaskEvent) -> None:
        self._check_online()
        self.events.append(event)
        if self.auto_ack and self.manager is not None and event.seq:
            await self.manager.ack_event(event.task_id, event.attempt, event.seq)
        await self._notify()

    async def emit_logs(self, task_id: str, chunks: list[LogChunk]) -> None:
        self._check_online()
        last = self.last_seq.get(task_id, 0)
        kept = self.lines.setdefault(task_id, [])
        for rec in [rec for chunk in chunks for rec in chunk.records()]:
            if rec.seq <= last:
                self.duplicates += 1
                continue
            if rec.seq != last + 1:
                self.gaps.append((task_id, last + 1, rec.seq))
            last = rec.seq
            self.bytes_received[task_id] = self.bytes_received.get(task_id, 0) + len(rec.text) + 1
            if self.keep_lines:
                kept.append(rec)
        self.last_seq[task_id] = last
        if self.auto_ack and self.manager is not None:
            await self.manager.ack_logs(task_id, last)
        await self._notify()

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        self._check_online()
        src = self.bundles.get(task_id)
        if src is None:
            raise BundleError(f"no bundle for task {task_id}")
        await asyncio.to_thread(shutil.copyfile, src, dest)
        got = await asyncio.to_thread(sha256_file, dest)
        if sha256 and got != sha256:
            raise BundleError(f"bundle of {task_id} has sha256 {got}, expected {sha256}")
        if size and dest.stat().st_size != size:
            raise BundleError(f"bundle of {task_id} has {dest.stat().st_size} bytes, expected {size}")

    async def upload_result(self, task_id: str, archive: Path, attempt: int = 1, fresh: bool = False,
                            sha256: str = "") -> None:
        self._check_online()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        dest = self.results_dir / f"{task_id}.result"
        await asyncio.to_thread(shutil.copyfile, archive, dest)
        self.results[task_id] = dest
        self.usage[task_id] = await asyncio.to_thread(read_usage, archive)
        self.uploads[task_id] = self.uploads.get(task_id, 0) + 1
        if self.auto_ack and self.manager is not None:
            await self.manager.ack_result(task_id)
        await self._notify()

    def sign_usage(self, record: dict) -> SignedRecord | None:
        return sign(record, self.usage_key)

    # -- for tests and benches -----------------------------------------------------
    def statuses(self, task_id: str) -> list[TaskStatus]:
        return [e.status for e in self.events if e.task_id == task_id]

    def last_event(self, task_id: str) -> TaskEvent | None:
        found = [e for e in self.events if e.task_id == task_id]
        return found[-1] if found else None

    def final_event(self, task_id: str) -> TaskEvent | None:
        """The event that ended the task's run (exited, failed, cancelled, ...)."""
        ends = {
            TaskStatus.EXITED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT,
            TaskStatus.OOM_KILLED, TaskStatus.REJECTED, TaskStatus.LOST,
        }
        found = [e for e in self.events if e.task_id == task_id and e.status in ends]
        return found[-1] if found else None

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    async def wait_status(self, task_id: str, status: TaskStatus, timeout: float) -> None:
        await self.wait_for(lambda: status in self.statuses(task_id), timeout)


if TYPE_CHECKING:  # mypy (tests/unit/core/test_types.py) holds it to the seam it stands in for
    _host: TaskHost = LocalTaskHost(Path("results"))
