"""Routes between the control session and the task manager.

It is the session's handler (hello, welcome, the master's messages) and the task
manager's TaskHost (events, logs, bundles, results). What must not be lost
(events, logs, results) lives in the task manager's journal and spool; when the
session is down, sending simply fails and ``resync`` re-sends after reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from hivemind_worker import __version__
from hivemind_worker.agent.convert import (
    event_to_pb,
    held_to_pb,
    log_batches,
    request_from_pb,
    resources_to_pb,
)
from hivemind_worker.control import transfer
from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import MasterUnreachable
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.tasks.model import HeldTask, LogRecord, Resources, TaskEvent, TaskRequest, TaskStatus

logger = logging.getLogger(__name__)

MAX_CLOCK_SKEW_S = 5.0  # task timeouts and log times are compared across hosts


class TaskService(Protocol):
    """What the agent needs of the task manager (tasks.manager.TaskManager)."""

    async def start(self) -> None: ...
    async def drain(self, deadline_s: float) -> None: ...
    async def close(self) -> None: ...
    async def assign(self, req: TaskRequest) -> None: ...
    async def cancel(self, task_id: str, reason: str) -> None: ...
    async def ack_logs(self, task_id: str, seq: int) -> None: ...
    async def ack_result(self, task_id: str) -> None: ...
    async def resync(self) -> None: ...
    def held_tasks(self) -> list[HeldTask]: ...
    def capacity(self) -> Resources: ...
    def free(self) -> Resources: ...


class Router:
    def __init__(self, node_id: str, credential: str, max_message_bytes: int, task_slots: int = 0) -> None:
        self.node_id = node_id
        self._credential = credential
        self._max_message_bytes = max_message_bytes
        self._task_slots = task_slots
        self.session: ControlSession | None = None
        self.tasks: TaskService | None = None
        self.draining = False
        self.report_interval_override: float | None = None
        self.counters: dict[str, int] = {"log_lines_sent": 0, "log_bytes_sent": 0, "events_sent": 0}
        self.on_event: Callable[[TaskEvent], None] | None = None  # e.g. the task history
        self._transfers: set[asyncio.Future] = set()  # bulk calls in flight

    # ------------------------------------------------------------ SessionHandler
    def hello(self) -> pb.Hello:
        held = self.tasks.held_tasks() if self.tasks else []
        capacity = self.tasks.capacity() if self.tasks else Resources()
        free = self.tasks.free() if self.tasks else Resources()
        return pb.Hello(
            node_id=self.node_id,
            agent_version=__version__,
            capacity=resources_to_pb(capacity),
            free=resources_to_pb(free),
            tasks=[held_to_pb(h) for h in held],
            draining=self.draining,
            max_message_bytes=self._max_message_bytes,
            task_slots=self._task_slots,
        )

    async def on_connected(self, welcome: pb.Welcome) -> None:
        skew_s = time.time() - welcome.server_time_ms / 1000 if welcome.server_time_ms else 0.0
        if abs(skew_s) > MAX_CLOCK_SKEW_S:
            logger.warning("this host's clock is %+.1f s off the master's; enable time sync (timedatectl set-ntp true)", skew_s)
        if welcome.report_interval_s:
            self.report_interval_override = float(welcome.report_interval_s)
        if self.draining:
            self.send(pb.WorkerMessage(drain=pb.Drain(draining=True, reason="node is shutting down")))
        if self.tasks:
            await self.tasks.resync()

    async def on_message(self, message: pb.MasterMessage) -> None:
        kind = message.WhichOneof("kind")
        tasks = self.tasks
        if kind == "assign":
            req = request_from_pb(message.assign)
            if tasks is None or self.draining:
                why = "node is draining" if self.draining else "task runtime is not available on this node"
                await self.emit_event(TaskEvent(req.task_id, status=TaskStatus.REJECTED, reason=why))
            else:
                await tasks.assign(req)
        elif kind == "cancel" and tasks:
            await tasks.cancel(message.cancel.task_id, message.cancel.reason or "cancelled by the master")
        elif kind == "log_ack" and tasks:
            await tasks.ack_logs(message.log_ack.task_id, message.log_ack.seq)
        elif kind == "result_ack" and tasks:
            await tasks.ack_result(message.result_ack.task_id)
        elif kind == "drain":
            self.draining = message.drain.draining
            logger.info("master asked to %s", "drain" if self.draining else "resume")
        elif kind == "welcome":
            logger.debug("ignoring a second welcome")

    async def on_disconnected(self) -> None:
        logger.info("session closed; tasks keep running and their output is kept until the master is back")
        # A bulk call on the lost connection can hang rather than fail (seen with an
        # upload in flight when the master was killed): end it, the next session resumes.
        for transfer_task in list(self._transfers):
            transfer_task.cancel()

    # ------------------------------------------------------------ TaskHost
    def send(self, message: pb.WorkerMessage) -> bool:
        return self.session is not None and self.session.send(message)

    async def emit_event(self, event: TaskEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if self.send(event_to_pb(event)):
            self.counters["events_sent"] += 1

    async def emit_logs(self, task_id: str, lines: list[LogRecord]) -> None:
        for message in log_batches(task_id, lines, self._max_message_bytes):
            if not self.send(message):
                return
            self.counters["log_lines_sent"] += len(message.logs.lines)
            self.counters["log_bytes_sent"] += sum(len(line.text) + 1 for line in message.logs.lines)

    def _channel(self):
        channel = self.session.channel if self.session else None
        if channel is None or not self.session.connected:
            raise MasterUnreachable("no session with the master right now; will retry after reconnect")
        return channel

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        await self._transfer(transfer.fetch_bundle(self._channel(), self._credential, task_id, dest, size, sha256))

    async def upload_result(self, task_id: str, archive: Path) -> None:
        digest = await asyncio.to_thread(transfer.file_sha256, archive)
        await self._transfer(transfer.upload_result(self._channel(), self._credential, task_id, archive, digest))

    async def _transfer(self, coro) -> None:
        """Run a bulk call that on_disconnected() can end; its caller then sees
        MasterUnreachable (and retries on the next session), not a cancellation."""
        task = asyncio.ensure_future(coro)
        self._transfers.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # we are being cancelled ourselves
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
            "draining": self.draining,
        }

