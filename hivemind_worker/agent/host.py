"""The task manager's TaskHost over the control session: events, log lines, bundle
downloads and result uploads. Built right after the session and before the task
manager, so the agent is assembled in one direction (agent/app.py).

What must not be lost (events, logs, results) lives in the task manager's journal and
spool: when the session is down, sending raises MasterUnreachable, and the manager's
``resync`` after the next connect sends again what the master has not acknowledged.

It holds the node's usage key (made at enrollment, given by agent/app.py): the task
layer asks it to sign each task's usage record, and each upload carries the record
written beside the archive.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Coroutine

from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import MasterUnreachable, UsageRecordError
from hivemind_worker.fsutil import sha256_file
from hivemind_worker.tasks.model import LogChunk, TaskEvent
from hivemind_worker.tasks.result import read_usage
from hivemind_worker.identity import UsageKey
from hivemind_worker.usage import SignedRecord

logger = logging.getLogger(__name__)


def _usage_and_digest(archive: Path, sha256: str) -> tuple[SignedRecord | None, str]:
    return read_usage(archive), sha256 or sha256_file(archive)


class SessionHost:
    def __init__(self, session: ControlSession, usage_key: UsageKey | None = None,
                 on_usage: Callable[[str, str], None] | None = None) -> None:
        """``on_usage(task_id, record_json)``: told each record the master took with its result."""
        self.session = session
        self.counters: dict[str, int] = {"log_lines_sent": 0, "log_bytes_sent": 0, "events_sent": 0}
        self._transfers: set[asyncio.Future] = set()  # bulk calls in flight
        self._usage_key = usage_key
        # Sent in every hello: how a node enrolled before usage records tells the master.
        self.usage_public_key = usage_key.public if usage_key is not None else b""
        self._refused: set[tuple[str, int]] = set()  # (task, attempt) whose record refusal was logged
        self._on_usage = on_usage

    def sign_usage(self, record: dict) -> SignedRecord | None:
        return self._usage_key.sign(record) if self._usage_key is not None else None

    async def emit_event(self, event: TaskEvent) -> None:
        if not self.session.send_event(event):
            raise MasterUnreachable("no session with the master right now; the event is sent after reconnect")
        self.counters["events_sent"] += 1

    async def progress(self, event: TaskEvent) -> None:
        """An event that is not journaled (DEFERRED): sent now or never."""
        try:
            await self.emit_event(event)
        except MasterUnreachable as exc:
            logger.info("event for %s not sent: %s", event.task_id, exc)

    async def emit_logs(self, task_id: str, chunks: list[LogChunk]) -> None:
        count, size = self.session.send_logs(task_id, chunks)
        self.counters["log_lines_sent"] += count
        self.counters["log_bytes_sent"] += size
        if count < sum(chunk.lines for chunk in chunks):
            raise MasterUnreachable("no session with the master right now; the lines are resent after reconnect")

    def _connected(self) -> ControlSession:
        if not self.session.connected:
            raise MasterUnreachable("no session with the master right now; will retry after reconnect")
        return self.session

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        await self._transfer(self._connected().fetch_bundle(task_id, dest, size, sha256))

    async def upload_result(self, task_id: str, archive: Path, attempt: int = 1, fresh: bool = False,
                            sha256: str = "") -> None:
        """``fresh``: the archive was built by this process and never offered (the
        upload skips asking the master where to resume); ``sha256``: its digest as
        built (not read again: ~2 s per GiB per try)."""
        session = self._connected()
        usage, digest = await asyncio.to_thread(_usage_and_digest, archive, sha256)  # one thread hop
        try:
            await self._transfer(session.upload_result(task_id, attempt, archive, usage, fresh=fresh, sha256=digest))
        except UsageRecordError as exc:
            # The same record is refused again on every retry: say it loudly once per attempt.
            if (task_id, attempt) not in self._refused:
                self._refused.add((task_id, attempt))
                logger.warning("%s", exc, extra={"task_id": task_id})
            raise
        self._refused.discard((task_id, attempt))
        if usage is not None and self._on_usage is not None:
            self._on_usage(task_id, usage.record.decode())

    def end_transfers(self) -> None:
        """A bulk call on a lost connection can hang rather than fail (seen with an
        upload in flight when the master was killed): end it, the next session resumes."""
        for transfer_task in list(self._transfers):
            transfer_task.cancel()

    async def _transfer(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a bulk call that end_transfers() can end; its caller then sees
        MasterUnreachable (and retries on the next session), not a cancellation."""
        task = asyncio.ensure_future(coro)
        self._transfers.add(task)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # we are being cancelled ourselves
                raise
            raise MasterUnreachable("the session ended during the transfer") from None
        finally:
            self._transfers.discard(task)
