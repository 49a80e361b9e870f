"""The outbox of task events: what the master must learn, sent in order, resent
until acknowledged.

An event with a seq is in the journal (journal.put_with_event / add_event) before it
gets here. The outbox keeps the unacknowledged ones in memory in journal order and
sends them through the host one at a time: a lock keeps the order across tasks
writing concurrently. After a failed send, or once the session dropped, it sends
nothing more until resend() (the agent calls it after every reconnect), so a later
event never overtakes an earlier one that was lost with the session. An EventAck
removes what it covers, from memory and journal. It outlives the task runs: the exit
record of a task the manager already forgot is still resent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable

from hivemind_worker.tasks.journal import Journal
from hivemind_worker.tasks.model import TaskEvent

logger = logging.getLogger(__name__)


class EventOutbox:
    def __init__(self, journal: Journal, host: Any, on_event: Callable[[TaskEvent], None] | None = None) -> None:
        self._journal = journal
        self._host = host
        self._on_event = on_event  # told once per event, at once, whether a session is up or not
        self._pending: list[TaskEvent] = []  # journaled, not acknowledged
        self._unsent: collections.deque[TaskEvent] = collections.deque()
        self._online = False  # until the first resend(): nothing has been sent yet
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Take over what an earlier agent left unacknowledged (sent at resend())."""
        self._pending = await self._journal.pending_events()

    @property
    def pending(self) -> list[TaskEvent]:
        return list(self._pending)

    async def publish(self, event: TaskEvent) -> None:
        """Send a journaled event now if the session allows, else at the next resend()."""
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a local history must never stop an event reaching the master
                logger.exception("recording event %s of %s failed", event.status.value, event.task_id)
        self._pending.append(event)
        self._unsent.append(event)
        await self._flush()

    async def resend(self) -> None:
        """A new session: everything not acknowledged goes again, in order."""
        async with self._lock:
            self._unsent = collections.deque(self._pending)
            self._online = True
        await self._flush()

    def pause(self) -> None:
        """The session dropped: hold events until resend()."""
        self._online = False

    async def ack(self, task_id: str, attempt: int, seq: int) -> None:
        def covered(e: TaskEvent) -> bool:
            return e.task_id == task_id and e.attempt == attempt and e.seq <= seq

        if not any(covered(e) for e in self._pending):
            return
        self._pending = [e for e in self._pending if not covered(e)]
        self._unsent = collections.deque(e for e in self._unsent if not covered(e))
        await self._journal.ack_events(task_id, attempt, seq)

    async def _flush(self) -> None:
        async with self._lock:
            while self._online and self._unsent:
                event = self._unsent[0]
                try:
                    await self._host.emit_event(event)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # no session: resend() sends it again
                    self._online = False
                    logger.info(
                        "event %s #%d of %s kept for the next session (%s)", event.status.value, event.seq,
                        event.task_id, exc, extra={"task_id": event.task_id},
                    )
                    return
                if self._unsent and self._unsent[0] is event:
                    self._unsent.popleft()
