"""The task manager's TaskHost over the control session: events, log lines, bundle
downloads and result uploads. Built right after the session and before the task
manager, so the agent is assembled in one direction (agent/app.py).

What must not be lost (events, logs, results) lives in the task manager's journal and
spool: when the session is down, sending raises MasterUnreachable, and the manager's
``resync`` after the next connect sends again what the master has not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Coroutine

from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import MasterUnreachable
from hivemind_worker.tasks.model import LogRecord, TaskEvent

logger = logging.getLogger(__name__)


class SessionHost:
    def __init__(self, session: ControlSession) -> None:
        self.session = session
        self.counters: dict[str, int] = {"log_lines_sent": 0, "log_bytes_sent": 0, "events_sent": 0}
        self._transfers: set[asyncio.Future] = set()  # bulk calls in flight

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

    async def emit_logs(self, task_id: str, lines: list[LogRecord]) -> None:
        count, size = self.session.send_logs(task_id, lines)
        self.counters["log_lines_sent"] += count
        self.counters["log_bytes_sent"] += size
        if count < len(lines):
            raise MasterUnreachable("no session with the master right now; the lines are resent after reconnect")

    def _connected(self) -> ControlSession:
        if not self.session.connected:
            raise MasterUnreachable("no session with the master right now; will retry after reconnect")
        return self.session

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        await self._transfer(self._connected().fetch_bundle(task_id, dest, size, sha256))

    async def upload_result(self, task_id: str, archive: Path, attempt: int = 1) -> None:
        await self._transfer(self._connected().upload_result(task_id, attempt, archive))

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
