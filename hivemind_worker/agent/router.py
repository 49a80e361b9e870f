"""Routes what the master sends to the task manager: the session's handler (hello,
welcome, the master's commands, disconnects). The task manager's way back to the
master is agent/host.py (SessionHost). Everything here is in the package's own
types; control/messages.py speaks protobuf.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

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
from hivemind_worker.agent.host import SessionHost
from hivemind_worker.control.session import ControlSession
from hivemind_worker.tasks.model import (
    DrainCause,
    DrainState,
    HeldTask,
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
    """Given everything it routes to; ``tasks`` is None when Docker is away (assignments
    are then deferred with the reason)."""

    def __init__(self, node_id: str, max_message_bytes: int, task_slots: int, drain: DrainState,
                 session: ControlSession, host: SessionHost, tasks: TaskService | None) -> None:
        self.node_id = node_id
        self._max_message_bytes = max_message_bytes
        self._task_slots = task_slots
        self.drain = drain
        self.session = session
        self.host = host
        self.tasks = tasks
        self.report_interval_override: float | None = None

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
            usage_public_key=self.host.usage_public_key,
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
                await self.host.progress(TaskEvent(command.request.task_id, TaskStatus.DEFERRED,
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
        self.host.end_transfers()

    def send_drain(self) -> bool:
        return self.session.send_drain(self.drain.draining, self.drain_text())
