"""One task's life, from admission to acknowledged result (an asyncio task per task).

    ACCEPTED -> FETCHING -> PULLING -> RUNNING -> EXITED | FAILED | CANCELLED | TIMED_OUT
    | OOM_KILLED -> UPLOADING -> DONE

Each step is written to the journal before it is acted on, then told to the host as
a TaskEvent with a seq, journaled in the same transaction and resent by the outbox
until the master acknowledges it (outbox.py). ``TaskRun.life()`` can start from any journaled state,
which is how a restarted agent re-attaches to a running container or delivers a
result it had not delivered. Whatever fails, the task ends with a status, an exit
code and a reason, and its result (maybe only the exit record and logs) is uploaded.
Nothing here ever runs task code on the host: no container, no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from hivemind_worker.config import Settings
from hivemind_worker.errors import MasterUnreachable, RuntimeUnavailable, TaskError, WorkerError
from hivemind_worker.runtime.api import ContainerRuntime
from hivemind_worker.runtime.spec import ContainerInfo, ContainerSpec
from hivemind_worker.tasks import supervise
from hivemind_worker.tasks.cleanup import free_workspace, open_output, remove_traces
from hivemind_worker.tasks.disk import DiskUsage, is_disk_full
from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.logpump import LogSender
from hivemind_worker.tasks.logspool import LogSpool
from hivemind_worker.tasks.result import UsageSeal, build_result, ensure_usage, exit_record
from hivemind_worker.tasks.model import Clock, Resources, TaskEvent, TaskHost, TaskStatus
from hivemind_worker.tasks.outbox import EventOutbox
from hivemind_worker.tasks.workspace import TaskDirs

logger = logging.getLogger(__name__)

PREPARING = {TaskStatus.ACCEPTED, TaskStatus.FETCHING, TaskStatus.PULLING}
FETCH_RETRY_S = 10.0  # the bundle could not be fetched (master away): try again
RETRY_S = 5.0  # after a failure of ours (e.g. Docker restarting), try the step again
LOG_ACK_GRACE_S = 60.0  # DONE waits this long without progress for the master's log acks


@dataclass
class RunContext:
    """What every TaskRun shares (the manager hands it over)."""

    settings: Settings
    runtime: ContainerRuntime
    host: TaskHost
    journal: Journal
    node_id: str
    clock: Clock
    release: Callable[[str], None]  # free a task's reserved resources (and GPUs)
    on_done: Callable[["TaskRun"], None]
    events: EventOutbox  # journaled events, sent until acknowledged
    disk_usage: DiskUsage = field(default_factory=DiskUsage)  # every running task's, for the hard mark


def _ms(clock: Clock) -> int:
    return int(clock() * 1000)


class TaskRun:
    def __init__(self, ctx: RunContext, row: TaskRow, resources: Resources) -> None:
        self.ctx = ctx
        self.row = row
        self.resources = resources
        self.dirs = TaskDirs(ctx.settings.state_dir / "tasks", row.task_id)
        self.spool: LogSpool | None = None
        self.sender: LogSender | None = None
        self.task: asyncio.Task | None = None
        self.closing = False
        self.result_acked = asyncio.Event()
        self.resynced = asyncio.Event()
        self._kill = asyncio.Event()
        self._prepare: asyncio.Task | None = None
        self.cpu_shares = 1024
        self._bg: set[asyncio.Task] = set()
        self._container_gone = False  # removed once the outcome was journaled

    @property
    def task_id(self) -> str:
        return self.row.task_id

    @property
    def _extra(self) -> dict:
        return {"task_id": self.task_id, "node_id": self.ctx.node_id}

    # -- journal + events -----------------------------------------------------------
    async def _record(self, **changes: Any) -> None:
        new = await self.ctx.journal.put(self.row.with_(**changes))
        # ack_logs() may have moved acked_seq while the write was in flight.
        self.row = new.with_(acked_seq=max(new.acked_seq, self.row.acked_seq))

    async def _emit(self, status: TaskStatus, reason: str = "", exit_code: int = 0, detail: str = "") -> None:
        """Progress only (seq 0, e.g. pull detail): best effort, never resent."""
        try:
            await self.ctx.host.emit_event(
                TaskEvent(self.task_id, status, reason, exit_code, detail, _ms(self.ctx.clock), attempt=self.row.attempt)
            )
        except Exception as exc:
            logger.info("event %s of %s not sent: %s", status.value, self.task_id, exc, extra=self._extra)

    async def _step(self, status: TaskStatus, reason: str = "", **changes: Any) -> None:
        """A state change the master must learn: journaled with its event in one
        transaction, then sent through the outbox (resent until acknowledged)."""
        row = self.row.with_(status=status, reason=reason, **changes)
        event = TaskEvent(self.task_id, status, reason, row.exit_code, "", _ms(self.ctx.clock))
        new, event = await self.ctx.journal.put_with_event(row, event)
        self.row = new.with_(acked_seq=max(new.acked_seq, self.row.acked_seq))
        # UPLOADING and DONE carry the outcome's reason along; it was logged with the outcome.
        said = f" ({reason})" if reason and status not in (TaskStatus.UPLOADING, TaskStatus.DONE) else ""
        logger.info("task %s %s%s", self.task_id, status.value, said, extra=self._extra)
        await self.ctx.events.publish(event)

    async def reemit(self) -> None:
        """The current state again, as progress (a repeated assign); the outbox
        already delivers every state change."""
        await self._emit(self.row.status, self.row.reason, self.row.exit_code)

    def open_spool(self) -> LogSpool:
        if self.spool is None:
            self.spool = LogSpool(self.dirs.spool, self.ctx.settings.log_spool_max_bytes)
            self.sender = LogSender(self.task_id, self.spool, self.ctx.host, self.row.acked_seq)
            self.sender.start()
        return self.spool

    # -- the life -------------------------------------------------------------------
    async def life(self, container: ContainerInfo | None = None, lost: bool = False) -> None:
        """Carry the task on from its journaled state. ``container`` is what Docker
        has for it after a restart; ``lost``: the journal says RUNNING but Docker has
        no container for it any more. A failure of ours (Docker restarting) is
        retried from the journaled state; a full disk ends the task (node disk full)
        and only delivering its outcome waits for room. Never a host run."""
        while True:
            try:
                await self._advance(container, lost)
                return
            except asyncio.CancelledError:
                raise  # close(): the container keeps running; a new agent re-attaches
            except Exception as exc:
                if is_disk_full(exc) and await self._disk_full(exc):
                    container, lost = None, False
                    continue  # ended: go on from the new journaled state at once
                logger.exception(
                    "task %s: step %s failed; retrying in %.0f s", self.task_id, self.row.status.value,
                    RETRY_S, extra=self._extra,
                )
            await asyncio.sleep(RETRY_S)
            container, lost = None, False
            if self.row.status is TaskStatus.RUNNING and self.row.container_id:
                try:
                    container = await self.ctx.runtime.inspect(self.row.container_id)
                    lost = container is None
                except WorkerError as exc:
                    logger.warning("task %s: Docker still unavailable: %s", self.task_id, exc, extra=self._extra)

    async def _disk_full(self, exc: Exception) -> bool:
        """ENOSPC while the task ran or was prepared: stop it, free its workspace, end
        it FAILED. False if it had ended already (delivery waits for room)."""
        status = self.row.status
        if status.finished:
            return False
        done = "task stopped, output dropped" if status is TaskStatus.RUNNING else "task not run"
        reason = f"node disk full while {status.value}: {exc}; {done}"
        if self.row.kill_reason.startswith(("node disk full", "disk limit")):
            reason = self.row.kill_reason  # its disk watch's, not journaled before the journal filled up too
        try:
            if self.row.container_id:
                await (self.ctx.runtime.kill if status is TaskStatus.RUNNING else self.ctx.runtime.remove)(
                    self.row.container_id)
            await free_workspace(self.ctx.runtime, self.ctx.settings, self.ctx.node_id, self.row, self.dirs)
            await self._finish(TaskStatus.FAILED, -1, reason)
            return True
        except Exception as again:
            logger.warning("task %s: could not end it after a full disk: %s", self.task_id, again, extra=self._extra)
            return False

    async def _advance(self, container: ContainerInfo | None, lost: bool) -> None:
        self.open_spool()
        if lost and self.row.status is TaskStatus.RUNNING:
            await self._finish(TaskStatus.LOST, -1, "lost: the task's container disappeared while no agent "
                               "watched it (removed outside the agent); not the task's fault")
        if self.row.status in PREPARING:
            if container is not None:  # created by an interrupted earlier attempt
                await self.ctx.runtime.remove(container.container_id)
                container = None
            await self._run_prepare()
        if self.row.status is TaskStatus.RUNNING:
            await self._watch(container)
        fresh = False  # built just now, never offered: the master cannot hold a byte of it
        if self.row.status.finished and self.row.status not in (TaskStatus.UPLOADING, TaskStatus.DONE):
            await self._archive()
            fresh = True
        if self.row.status is TaskStatus.UPLOADING:
            await self._deliver(fresh)

    async def _run_prepare(self) -> None:
        if self.row.kill_reason:
            await self._finish(TaskStatus.CANCELLED, -1, self.row.kill_reason)
            return
        self._prepare = asyncio.create_task(self._prepare_container())
        try:
            await self._prepare
        except asyncio.CancelledError:
            if self.closing or not self.row.kill_reason:
                raise
            # cancel() during fetch/pull/create: the task never ran.
            if self.row.container_id:
                await self.ctx.runtime.remove(self.row.container_id)
            await self._finish(TaskStatus.CANCELLED, -1, self.row.kill_reason)
        except (WorkerError, OSError) as exc:
            if self.row.container_id:
                await self.ctx.runtime.remove(self.row.container_id)
            reason = str(exc) if isinstance(exc, WorkerError) else f"workspace: {exc}"
            if is_disk_full(exc):  # bundle download or unpack, workspace creation
                await asyncio.to_thread(self.dirs.free_workspace)
                reason = f"node disk full while {self.row.status.value}: {reason}; task not run"
            if isinstance(exc, RuntimeUnavailable):  # the engine (restarting?), not the task
                await self._finish(TaskStatus.LOST, -1, f"lost: the task could not be started: {exc}; "
                                   "not the task's fault")
                return
            await self._finish(TaskStatus.FAILED, -1, reason)
        finally:
            self._prepare = None

    async def _prepare_container(self) -> None:
        s, req, rt = self.ctx.settings, self.row.request, self.ctx.runtime
        await asyncio.to_thread(self.dirs.create, s.task_user)
        if req.bundle_size > 0:
            await self._step(TaskStatus.FETCHING)
            await self._fetch_bundle()
            from hivemind_worker.tasks.bundle import unpack_bundle

            await asyncio.to_thread(
                unpack_bundle, self.dirs.bundle, self.dirs.workspace, s.bundle_max_files, s.bundle_max_bytes
            )
            await asyncio.to_thread(self._after_unpack)
        image = req.image or s.task_image
        if not await rt.has_image(image):  # an image seen before costs no engine call
            await self._pull(image)
        spec = ContainerSpec(
            task_id=self.task_id,
            node_id=self.ctx.node_id,
            image=image,
            command=tuple(req.command),
            env=dict(req.env),
            workspace=self.dirs.workspace.resolve(),
            cpu_millicores=self.resources.cpu_millicores,
            memory_bytes=self.resources.memory_bytes,
            pids_limit=s.task_pids_limit,
            gpu_device_ids=self.row.gpu_ids,
            network=req.network,
            user=s.task_user,
            ca_bundle=s.container_ca_bundle,
            cpu_shares=self.cpu_shares,
            entrypoint=req.entrypoint,
            runtime=s.task_runtime,
        )
        try:
            cid = await rt.create(spec)
        except TaskError:
            if await rt.has_image(image):
                raise
            await self._pull(image)  # removed since the runtime last saw it
            cid = await rt.create(spec)
        # The container id goes into the journal with RUNNING, one transaction, before
        # start(); if that write fails, _run_prepare removes the container by this id.
        self.row = self.row.with_(container_id=cid)
        await self._step(TaskStatus.RUNNING, container_id=cid, started_ms=_ms(self.ctx.clock))
        await rt.start(cid)

    async def _pull(self, image: str) -> None:
        await self._step(TaskStatus.PULLING, f"pulling {image}")
        loop = asyncio.get_running_loop()

        def progress(text: str) -> None:
            t = loop.create_task(self._emit(TaskStatus.PULLING, f"pulling {image}", detail=text))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)

        await self.ctx.runtime.pull(image, progress)

    async def _fetch_bundle(self) -> None:
        """Download the bundle; while the master is unreachable, wait for the next
        session (or FETCH_RETRY_S) and try again. A bad bundle fails the task."""
        req = self.row.request
        while True:
            self.resynced.clear()
            try:
                await self.ctx.host.fetch_bundle(self.task_id, self.dirs.bundle, req.bundle_size, req.bundle_sha256)
                return
            except MasterUnreachable as exc:
                logger.info("bundle of %s not fetched yet: %s", self.task_id, exc, extra=self._extra)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.resynced.wait(), FETCH_RETRY_S)

    def _after_unpack(self) -> None:
        self.dirs.bundle.unlink(missing_ok=True)
        self.dirs.ensure_output()
        self.dirs.give_to_task(self.ctx.settings.task_user)

    def request_kill(self, reason: str) -> None:
        self._kill.set()
        if self._prepare is not None:
            self._prepare.cancel()

    async def _watch(self, container: ContainerInfo | None) -> None:
        await supervise.watch(self, container)  # follow, wait, kill, engine restarts, verdict

    async def _finish(self, status: TaskStatus, code: int, reason: str) -> None:
        if self.spool is not None:
            self.spool.finish(_ms(self.ctx.clock))
            if self.sender:
                self.sender.wake()
        await self._step(status, reason, exit_code=code, ended_ms=_ms(self.ctx.clock))
        self.ctx.release(self.task_id)

    async def _archive(self) -> None:
        if self.row.container_id and not self._container_gone:
            # The outcome is journaled and the output read: the container has nothing
            # left to give. It goes now, while the master assigns the next task, not
            # at DONE, when the engine would be creating that task's container (it
            # serializes a removal and a creation).
            self._container_gone = await self._remove_container()
        spool = self.open_spool()
        spool.flush()
        record = exit_record(self.row, spool, self.ctx.settings.task_image)
        await open_output(self.ctx.runtime, self.ctx.settings, self.ctx.node_id, self.row, self.dirs)
        size, sha, failure = await asyncio.to_thread(
            build_result, self.dirs, spool.path, record, self.ctx.settings.result_max_bytes, self._seal()
        )
        if failure:  # the task ran, but its output cannot be shipped: say so
            await self._step(TaskStatus.FAILED, failure)
        await self._step(
            TaskStatus.UPLOADING, self.row.reason,
            result_path=str(self.dirs.result), result_size=size, result_sha256=sha,
        )

    def _seal(self) -> UsageSeal:  # what signing the usage record needs; the key stays with the host
        return UsageSeal(self.row, self.ctx.node_id, self.resources, self.ctx.host.sign_usage)

    async def _deliver(self, fresh: bool = False) -> None:
        while not self.result_acked.is_set():
            self.resynced.clear()
            try:
                await asyncio.to_thread(ensure_usage, self.dirs.result, self._seal())  # spooled before records
                await self.ctx.host.upload_result(self.task_id, self.dirs.result, self.row.attempt, fresh=fresh,
                                                  sha256=self.row.result_sha256)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.info("result of %s not uploaded (%s); retried on the next session", self.task_id, exc, extra=self._extra)
            fresh = False  # offered once: the master may hold part of it now
            acked = asyncio.create_task(self.result_acked.wait())
            resynced = asyncio.create_task(self.resynced.wait())
            try:
                await asyncio.wait({acked, resynced}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                acked.cancel()
                resynced.cancel()
        await self._logs_delivered()
        await self._done()

    async def _logs_delivered(self) -> None:
        """The spool goes with DONE: first let the master acknowledge every line. A
        master silent for LOG_ACK_GRACE_S has what it needs: the lines are in the result."""
        if self.sender is not None and not self.sender.online:
            # A send failed (e.g. its ack hit a full journal), yet the result just went
            # through: the session is up, so resend what is not acknowledged.
            self.sender.resync()
        if self.sender is not None and not await self.sender.drained(self.ctx.clock, LOG_ACK_GRACE_S):
            logger.warning(
                "task %s: master acknowledged log lines up to %d of %d; the rest are in the result",
                self.task_id, self.sender.acked_seq, self.sender.spool.flushed_seq, extra=self._extra,
            )

    async def _remove_container(self) -> bool:
        try:
            await self.ctx.runtime.remove(self.row.container_id)
            return True
        except WorkerError as exc:  # the engine away: remove_traces tries again after delivery
            logger.info("task %s: container not removed yet (%s)", self.task_id, exc, extra=self._extra)
            return False

    async def _done(self) -> None:
        await self._step(TaskStatus.DONE, self.row.reason)
        await self.close_logs()
        row = self.row.with_(container_id="") if self._container_gone else self.row
        await remove_traces(self.ctx.runtime, self.ctx.settings, self.ctx.node_id, row, self.dirs)
        self.ctx.on_done(self)

    async def close_logs(self) -> None:
        if self.sender is not None:
            await self.sender.stop()
        if self.spool is not None:
            self.spool.close()
