"""Routes between the control session and the task manager.

It is the session's handler (hello, welcome, the master's commands) and the task
manager's TaskHost (events, logs, bundles, results). What must not be lost (events,
logs, results) lives in the task manager's journal and spool: when the session is
down, sending raises MasterUnreachable, and the manager's ``resync`` after the next
connect sends again what the master has not acknowledged. Everything here is in the
package's own types; control/messages.py speaks protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Protocol

from hivemind_worker import __version__
from hivemind_worker.control.channel import MAX_CLOCK_SKEW_S
from hivemind_worker.control.messages import (
    Assign,
    Cancel,
    DrainRequest,
    EventAck,
    LogAck,
    MasterCommand,
    NodeHello,
    ResultAck,
    Welcome,
)
from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import MasterUnreachable
from hivemind_worker.tasks.model import (
    DrainCause,
    DrainState,
    HeldTask,
    LogRecord,
    Resources,
    TaskEvent,
    TaskRequest,
    TaskStatus,
)

logger = logging.getLogger(__name__)


# What the master reads in a Drain message, per cause (the hello carries the cause).
DRAIN_TEXT = {
    DrainCause.SHUTDOWN: "node is shutting down",
    DrainCause.OPERATOR: "drained by the operator",
    DrainCause.MASTER: "drained by the master",
}


class TaskService(Protocol):
    """What the agent needs of the task manager (tasks.manager.TaskManager)."""

    async def start(self) -> None: ...
    async def drain(self, deadline_s: float) -> None: ...
    async def close(self) -> None: ...
    async def assign(self, req: TaskRequest) -> None: ...
    async def cancel(self, task_id: str, reason: str) -> None: ...
    async def ack_logs(self, task_id: str, seq: int) -> None: ...
    async def ack_result(self, task_id: str, attempt: int = 0) -> None: ...
    async def ack_event(self, task_id: str, attempt: int, seq: int) -> None: ...
    async def resync(self) -> None: ...
    def session_closed(self) -> None: ...
    def held_tasks(self) -> list[HeldTask]: ...
    def capacity(self) -> Resources: ...
    def free(self) -> Resources: ...


class Router:
    def __init__(self, node_id: str, max_message_bytes: int, task_slots: int = 0,
                 drain: DrainState | None = None) -> None:
        self.node_id = node_id
        self._max_message_bytes = max_message_bytes
        self._task_slots = task_slots
        self.drain = drain or DrainState()
        self.session: ControlSession | None = None
        self.tasks: TaskService | None = None
        self.report_interval_override: float | None = None
        self.counters: dict[str, int] = {"log_lines_sent": 0, "log_bytes_sent": 0, "events_sent": 0}
        self._transfers: set[asyncio.Future] = set()  # bulk calls in flight

    @property
    def draining(self) -> bool:
        return self.drain.draining

    def drain_text(self) -> str:
        cause = self.drain.cause
        return DRAIN_TEXT[cause] if cause else "taking tasks again"

    # ------------------------------------------------------------ SessionHandler
    def hello(self) -> NodeHello:
        tasks = self.tasks
        return NodeHello(
            node_id=self.node_id,
            agent_version=__version__,
            capacity=tasks.capacity() if tasks else Resources(),
            free=tasks.free() if tasks else Resources(),
            tasks=tasks.held_tasks() if tasks else [],
            draining=self.drain.draining,
            drain_reason=self.drain.reason,
            max_message_bytes=self._max_message_bytes,
            task_slots=self._task_slots,
        )

    async def on_connected(self, welcome: Welcome) -> None:
        skew_s = time.time() - welcome.server_time_ms / 1000 if welcome.server_time_ms else 0.0
        if abs(skew_s) > MAX_CLOCK_SKEW_S:
            logger.warning("this host's clock is %+.1f s off the master's; enable time sync (timedatectl set-ntp true)", skew_s)
        if welcome.report_interval_s:
            self.report_interval_override = float(welcome.report_interval_s)
        if self.drain.draining:
            self.send_drain()
        if self.tasks:
            await self.tasks.resync()

    async def on_message(self, command: MasterCommand) -> None:
        tasks = self.tasks
        if isinstance(command, Assign):
            if tasks is None:  # not now: Docker may be back later, another node may run it
                await self._progress(TaskEvent(command.request.task_id, TaskStatus.DEFERRED,
                                               "task runtime is not available on this node (see hivemind-worker doctor)",
                                               attempt=command.request.attempt))
            else:
                await tasks.assign(command.request)
        elif isinstance(command, DrainRequest):
            changed = self.drain.start(DrainCause.MASTER) if command.draining else self.drain.end(DrainCause.MASTER)
            logger.info("master asked to %s%s", "drain" if command.draining else "resume",
                        "" if changed else f" (still draining: {self.drain.reason})" if self.drain.draining else "")
        elif isinstance(command, Welcome):
            logger.debug("ignoring a second welcome")
        elif tasks is None:
            return
        elif isinstance(command, Cancel):
            await tasks.cancel(command.task_id, command.reason or "cancelled by the master")
        elif isinstance(command, LogAck):
            await tasks.ack_logs(command.task_id, command.seq)
        elif isinstance(command, ResultAck):
            await tasks.ack_result(command.task_id, command.attempt)
        elif isinstance(command, EventAck):
            await tasks.ack_event(command.task_id, command.attempt, command.seq)

    async def on_disconnected(self) -> None:
        logger.info("session closed; tasks keep running and their output is kept until the master is back")
        if self.tasks:
            self.tasks.session_closed()
        # A bulk call on the lost connection can hang rather than fail (seen with an
        # upload in flight when the master was killed): end it, the next session resumes.
        for transfer_task in list(self._transfers):
            transfer_task.cancel()

    def send_drain(self) -> bool:
        return self.session is not None and self.session.send_drain(self.drain.draining, self.drain_text())

    # ------------------------------------------------------------ TaskHost
    async def emit_event(self, event: TaskEvent) -> None:
        if self.session is None or not self.session.send_event(event):
            raise MasterUnreachable("no session with the master right now; the event is sent after reconnect")
        self.counters["events_sent"] += 1

    async def _progress(self, event: TaskEvent) -> None:
        try:
            await self.emit_event(event)
        except MasterUnreachable as exc:
            logger.info("event for %s not sent: %s", event.task_id, exc)

    async def emit_logs(self, task_id: str, lines: list[LogRecord]) -> None:
        count, size = self.session.send_logs(task_id, lines) if self.session else (0, 0)
        self.counters["log_lines_sent"] += count
        self.counters["log_bytes_sent"] += size
        if count < len(lines):
            raise MasterUnreachable("no session with the master right now; the lines are resent after reconnect")

    def _session(self) -> ControlSession:
        if self.session is None or not self.session.connected:
            raise MasterUnreachable("no session with the master right now; will retry after reconnect")
        return self.session

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        await self._transfer(self._session().fetch_bundle(task_id, dest, size, sha256))

    async def upload_result(self, task_id: str, archive: Path, attempt: int = 1) -> None:
        await self._transfer(self._session().upload_result(task_id, attempt, archive))

    async def _transfer(self, coro: Awaitable[None]) -> None:
        """Run a bulk call that on_disconnected() can end; its caller then sees
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

    def summary(self) -> dict[str, Any]:
        s = self.session
        return {
            "state": s.state.value if s else "none",
            "session_id": s.session_id if s else "",
            "reconnects": s.reconnects if s else 0,
            "last_error": s.last_error if s else "",
            "connected_since": s.connected_since if s else None,
            "draining": self.drain.draining,
            "drain_reason": self.drain.reason,
        }
