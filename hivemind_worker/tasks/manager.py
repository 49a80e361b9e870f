"""The task manager: admits tasks, runs each in its own asyncio task, and keeps
the node's promises about them across reconnects and restarts.

The agent drives it (assign / cancel / acks from the master, resync after a
reconnect, drain on shutdown) and reads it (held_tasks for the hello, snapshot and
log_tail for the monitor). It talks to the outside only through the TaskHost it
was given and to Docker only through the runtime; it never imports the control
session. Where things live: runner.py (a task's life), journal.py, outbox.py (events),
logspool.py + logpump.py, admission.py, pressure.py, result.py, workspace.py + cleanup.py.

API::

    TaskManager(settings, runtime: ContainerRuntime, host: TaskHost, node_id, *, capacity: Resources,
                journal_path=None (state_dir/journal.db), clock: Clock = time.time,
                gpus: GpuPool | None = None, sampler=psutil_sampler (None: never
                under pressure), pressure_interval_s=5.0, drain: DrainState | None,
                disk_gate=lambda: "" (a low-disk reason defers every assignment))
    await start()      open the journal, reconcile with Docker (re-attach / deliver)
    await assign(req)  admit (ACCEPTED, then the task runs), defer (DEFERRED, seq 0:
                       not now, the node holds nothing) or reject (REJECTED: never here)
    await cancel(task_id, reason); await ack_logs(task_id, seq); await ack_result(task_id, attempt)
    await ack_event(task_id, attempt, seq)   the master applied events up to seq
    await resync()     after a (re)connect: resend unacked events and lines (same
                       seqs), re-upload pending results; session_closed(): hold events
    await drain(deadline_s); draining (the shared DrainState)
    await check_pressure()   one pressure sample, less the node's own tasks' load
    held_tasks() -> [HeldTask]; capacity(); free() (zero while slots are full,
    draining or under pressure); snapshot() -> [dict] (held tasks, monitor shape); history()
    -> [dict] (recently delivered); log_tail(task_id, n) -> [LogRecord]
    await close()      stop watching; containers keep running for the next agent
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path
from typing import Any, Callable

from hivemind_worker.config import Settings
from hivemind_worker.errors import TaskDeferred, TaskRejected, WorkerError
from hivemind_worker.runtime.api import ContainerRuntime, GpuPool
from hivemind_worker.tasks import admission, policy
from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.model import DrainCause, DrainState, HeldTask, LogRecord, Resources, TaskEvent, TaskRequest
from hivemind_worker.tasks.model import Clock, TaskHost, TaskStatus
from hivemind_worker.tasks.outbox import EventOutbox
from hivemind_worker.tasks.pressure import (
    HostSize, PressureGauge, Sampler, foreign_load, host_size, plan_shares, psutil_sampler,
)
from hivemind_worker.tasks.runner import PREPARING, RunContext, TaskRun
from hivemind_worker.tasks.snapshot import history_entry, run_snapshot
from hivemind_worker.tasks.workspace import TaskDirs, check_task_id

logger = logging.getLogger(__name__)

KEEP_DONE = 200  # delivered tasks remembered in the journal (the monitor's history)
RECENT = 50  # delivered tasks shown by snapshot()
DRAIN_RESULT_GRACE_S = 5.0  # the agent gives drain() its deadline + 10 s


class TaskManager:
    def __init__(
        self,
        settings: Settings,
        runtime: ContainerRuntime,
        host: TaskHost,
        node_id: str,
        *,
        capacity: Resources,
        journal_path: Path | None = None,
        clock: Clock = time.time,
        gpus: GpuPool | None = None,  # None = no GPUs
        sampler: Sampler | None = psutil_sampler,  # None = never under pressure
        pressure_interval_s: float = 5.0,
        drain: DrainState | None = None,  # the agent's; its own when run alone
        disk_gate: Callable[[], str] = lambda: "",  # non-empty: too little disk, why
        on_event: Callable[[TaskEvent], None] | None = None,  # each state change, session or not (history)
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.host = host
        self.node_id = node_id
        self.clock = clock
        self._capacity = capacity
        self._gpus = gpus
        self._sampler = sampler
        self._pressure_interval_s = pressure_interval_s
        self._journal = Journal(journal_path or settings.state_dir / "journal.db", clock)
        self._ledger = admission.Ledger.empty(capacity)
        self.gauge = PressureGauge(settings.pressure_cpu_percent, settings.pressure_memory_percent)
        self._runs: dict[str, TaskRun] = {}
        self._recent: collections.deque[dict] = collections.deque(maxlen=RECENT)
        self._done_ids: collections.OrderedDict[str, int] = collections.OrderedDict()  # -> attempt
        self.drain_state = drain or DrainState()
        self.disk_gate = disk_gate
        self.host_size: HostSize | None = None  # read once, on the first pressure check
        self._events = EventOutbox(self._journal, host, on_event)
        self._background: set[asyncio.Task] = set()
        self._pressure_task: asyncio.Task | None = None
        self._ctx = RunContext(
            settings=settings, runtime=runtime, host=host, journal=self._journal, node_id=node_id,
            clock=clock, release=self._release, on_done=self._on_done, events=self._events,
        )

    @property
    def _extra(self) -> dict:
        return {"node_id": self.node_id}

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Open the journal and reconcile it with Docker's containers."""
        await self._journal.open()
        await self._events.load()
        rows = await self._journal.all()
        containers = {c.task_id: c for c in await self.runtime.list_managed() if c.node_id in ("", self.node_id)}
        live = {r.task_id for r in rows if r.status is not TaskStatus.DONE}
        for row in rows:
            if row.status is TaskStatus.DONE:
                self._remember_done(row)
        for task_id, found in containers.items():
            if task_id not in live and found.node_id == self.node_id:
                # Delivered already (or never journaled): nothing may run unaccounted for.
                logger.info("removing container of finished task %s", task_id, extra=self._extra)
                await self.runtime.remove(found.container_id)
        for row in rows:
            if row.status is TaskStatus.DONE:
                continue
            need = admission.effective_resources(row.request, self._capacity)
            run = TaskRun(self._ctx, row, need)
            self._runs[row.task_id] = run
            if row.status in PREPARING or row.status is TaskStatus.RUNNING:
                self._ledger.hold(row.task_id, need)
                if self._gpus is not None and row.gpu_ids:
                    self._gpus.restore(row.task_id, row.gpu_ids)
            c = containers.get(row.task_id)
            logger.info(
                "resuming task %s from %s (container %s)", row.task_id, row.status.value,
                "running" if c and c.running else "exited" if c else "none", extra=self._extra,
            )
            self._launch(run, c, lost=row.status is TaskStatus.RUNNING and c is None)
        await self._events.resend()  # without a session yet, this waits for resync()
        if self._sampler is not None:
            self._pressure_task = asyncio.create_task(self._pressure_loop(), name="task-pressure")

    def _launch(self, run: TaskRun, container: Any = None, lost: bool = False) -> None:
        run.task = asyncio.create_task(run.life(container, lost), name=f"task-{run.task_id}")

    async def close(self) -> None:
        """Stop following and watching; containers keep running for the next agent."""
        if self._pressure_task is not None:
            self._pressure_task.cancel()
        for run in self._runs.values():
            run.closing = True
            if run.task is not None:
                run.task.cancel()
        tasks = [r.task for r in self._runs.values() if r.task] + list(self._background)
        if self._pressure_task is not None:
            tasks.append(self._pressure_task)
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in self._runs.values():
            await run.close_logs()
        self._runs.clear()
        await self._journal.close()

    # -- master requests ------------------------------------------------------------
    async def assign(self, req: TaskRequest) -> None:
        """Admit the task and start it, defer it (not now) or reject it (never here)."""
        held = self._runs.get(req.task_id)
        if held is not None and req.attempt <= held.row.attempt:
            await held.reemit()  # a repeated assign after a reconnect
            return
        if self._done_ids.get(req.task_id, 0) >= req.attempt:
            await self._emit(TaskEvent(req.task_id, TaskStatus.DONE, "already delivered", attempt=req.attempt))
            return
        gpu_ids: tuple[str, ...] = ()
        try:
            check_task_id(req.task_id)
            policy.check(req, self.settings)  # the master proposes, the node decides
            if held is not None:
                raise TaskDeferred(f"attempt {held.row.attempt} of this task is still being finished here")
            need = admission.effective_resources(req, self._capacity)
            admission.check(
                need,
                capacity=self._capacity,
                reserved=self._ledger.reserved,
                active=self._ledger.active,
                max_concurrent=self.settings.max_concurrent_tasks,
                drain=self.drain_state.reason,
                pressure=self.gauge.reason,
                disk=self.disk_gate(),
            )
            if need.gpu_count:
                if self._gpus is None:
                    raise TaskRejected(f"needs {need.gpu_count} GPU(s), the node has none; it is never run on CPU")
                gpu_ids = tuple(self._gpus.allocate(req.task_id, need.gpu_count))
        except TaskDeferred as exc:
            await self._defer(req, str(exc))
            return
        except TaskRejected as exc:
            await self._reject(req, str(exc))
            return
        # Reserved before the first await, so two assigns cannot both take the last CPU.
        self._ledger.hold(req.task_id, need)
        row = TaskRow(req.task_id, req, TaskStatus.ACCEPTED, gpu_ids=gpu_ids, created_ms=self._now_ms())
        try:  # a task delivered here before, as an older attempt, is replaced
            row, accepted = await self._journal.put_with_event(row, TaskEvent(req.task_id, TaskStatus.ACCEPTED,
                                                                              time_ms=self._now_ms()))
        except WorkerError as exc:
            self._release(req.task_id)
            await self._defer(req, f"the node cannot write its task journal now ({exc})")
            return
        run = TaskRun(self._ctx, row, need)
        self._runs[req.task_id] = run
        await self._events.publish(accepted)
        self._launch(run)

    async def _defer(self, req: TaskRequest, reason: str) -> None:
        """Not now: the master keeps the task queued; nothing is held or journaled."""
        logger.info("task %s deferred: %s", req.task_id, reason, extra={**self._extra, "task_id": req.task_id})
        await self._emit(TaskEvent(req.task_id, TaskStatus.DEFERRED, reason, time_ms=self._now_ms(), attempt=req.attempt))

    async def _reject(self, req: TaskRequest, reason: str) -> None:
        """Never here: an outcome, journaled (no task row) and resent until acknowledged."""
        logger.info("task %s rejected: %s", req.task_id, reason, extra={**self._extra, "task_id": req.task_id})
        event = TaskEvent(req.task_id, TaskStatus.REJECTED, reason, time_ms=self._now_ms(), seq=1, attempt=req.attempt)
        try:
            await self._journal.add_event(event)
        except WorkerError as exc:  # still sent, and resent while this agent lives
            logger.warning("rejection of %s not journaled: %s", req.task_id, exc, extra=self._extra)
        await self._events.publish(event)

    async def cancel(self, task_id: str, reason: str) -> None:
        run = self._runs.get(task_id)
        if run is None or run.row.status.finished or run.row.kill_reason:
            return
        await run._record(kill_reason=f"cancelled: {reason or 'by the master'}")
        run.request_kill(reason)

    async def ack_logs(self, task_id: str, seq: int) -> None:
        run = self._runs.get(task_id)
        if run is None or run.sender is None or seq <= run.sender.acked_seq:
            return
        run.sender.ack(seq)
        run.row = run.row.with_(acked_seq=run.sender.acked_seq)
        await self._journal.set_acked_seq(task_id, run.sender.acked_seq)

    async def ack_result(self, task_id: str, attempt: int = 0) -> None:
        """``attempt`` 0: whichever the node holds (a master that does not say)."""
        run = self._runs.get(task_id)
        if run is not None and attempt in (0, run.row.attempt):
            run.result_acked.set()

    async def ack_event(self, task_id: str, attempt: int, seq: int) -> None:
        await self._events.ack(task_id, attempt or 1, seq)

    async def resync(self) -> None:
        """After a (re)connect: resend unacknowledged events and lines, pending results."""
        await self._events.resend()
        for run in list(self._runs.values()):
            if run.sender is not None:
                run.sender.resync()
            run.resynced.set()

    def session_closed(self) -> None:
        """The session dropped: events wait for resync(), so none overtakes a lost one."""
        self._events.pause()

    async def drain(self, deadline_s: float) -> None:
        """Admit nothing more; let running tasks finish until the deadline, then cancel
        the rest; keep delivering results for a short grace."""
        self.drain_state.start(DrainCause.SHUTDOWN)
        end = self.clock() + deadline_s
        while self._ledger.active and self.clock() < end:
            await asyncio.sleep(0.1)
        for run in list(self._runs.values()):
            if not run.row.status.finished:
                await self.cancel(run.task_id, "node draining: deadline reached")
        end = max(end, self.clock()) + DRAIN_RESULT_GRACE_S
        while self._runs and self.clock() < end:
            await asyncio.sleep(0.1)

    @property
    def draining(self) -> bool:
        return self.drain_state.draining

    # -- views ----------------------------------------------------------------------
    def held_tasks(self) -> list[HeldTask]:
        return [
            HeldTask(
                r.task_id, r.row.status, r.spool.flushed_seq if r.spool else 0,
                r.row.status is TaskStatus.UPLOADING, r.row.attempt,
            )
            for r in self._runs.values()
        ]

    def capacity(self) -> Resources:
        return self._capacity

    def free(self) -> Resources:
        """What a new task could get now: nothing while every slot is taken, the node
        drains or the host is under pressure (a master that reads free assigns none)."""
        if self.drain_state.draining or self.gauge.under_pressure or self._ledger.active >= self.settings.max_concurrent_tasks:
            return Resources()
        return self._ledger.free()

    def snapshot(self) -> list[dict]:
        """Tasks the node holds now (not yet delivered), for the monitor."""
        return [run_snapshot(r, self.settings.task_image) for r in self._runs.values()]

    def history(self) -> list[dict]:
        """Recently delivered tasks, newest first."""
        return list(reversed(self._recent))

    def log_tail(self, task_id: str, n: int = 100) -> list[LogRecord]:
        run = self._runs.get(task_id)
        return run.spool.tail(n) if run and run.spool else []

    # -- pressure -------------------------------------------------------------------
    async def check_pressure(self) -> None:
        """Sample the host once, less the node's own tasks; adjust admission and CPU weights."""
        if self._sampler is None:
            return
        cpu, mem = await asyncio.to_thread(self._sampler)
        if self.host_size is None:
            self.host_size = await asyncio.to_thread(host_size)
        cpu, mem = foreign_load(cpu, mem, await self._own_usage(), self.host_size)
        if self.gauge.update(cpu, mem):
            logger.warning("host pressure %s", self.gauge.reason or "passed", extra=self._extra)
        running = [
            (r.task_id, r.row.request.priority) for r in self._runs.values()
            if r.row.status is TaskStatus.RUNNING and r.row.container_id
        ]
        for task_id, shares in plan_shares(running, self.gauge.under_pressure).items():
            run = self._runs.get(task_id)
            if run is None or run.cpu_shares == shares:
                continue
            try:
                await self.runtime.set_cpu_shares(run.row.container_id, shares)
                run.cpu_shares = shares
            except WorkerError as exc:
                logger.warning("cpu shares of %s not changed: %s", task_id, exc, extra=self._extra)

    async def _own_usage(self) -> list[tuple[float, int]]:
        """(CPU % of one core, memory bytes) of each running task container."""
        cids = [r.row.container_id for r in self._runs.values() if r.row.status is TaskStatus.RUNNING and r.row.container_id]
        found = await asyncio.gather(*(self.runtime.stats(cid) for cid in cids), return_exceptions=True)
        # A container we cannot read counts as nothing: that errs towards "pressure".
        return [(s.cpu_percent, s.memory_bytes) for s in found if s is not None and not isinstance(s, BaseException)]

    async def _pressure_loop(self) -> None:
        while True:
            try:
                await self.check_pressure()
            except Exception:
                logger.exception("pressure check failed", extra=self._extra)
            await asyncio.sleep(self._pressure_interval_s)

    # -- internals ------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _emit(self, event: TaskEvent) -> None:
        try:
            await self.host.emit_event(event)
        except Exception as exc:
            logger.info("event for %s not sent: %s", event.task_id, exc, extra=self._extra)

    def _release(self, task_id: str) -> None:
        self._ledger.release(task_id)
        if self._gpus is not None:
            self._gpus.release(task_id)

    def _remember_done(self, row: TaskRow) -> None:
        self._done_ids[row.task_id] = row.attempt
        while len(self._done_ids) > KEEP_DONE:
            self._done_ids.popitem(last=False)
        self._recent.append(history_entry(row, self.settings.task_image))
        TaskDirs(self.settings.state_dir / "tasks", row.task_id).remove()

    def _on_done(self, run: TaskRun) -> None:
        self._runs.pop(run.task_id, None)
        self._remember_done(run.row)
        task = asyncio.create_task(self._after_done())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after_done(self) -> None:
        """Disk hygiene once a task is gone: forget old history, trim task images."""
        try:
            await self._journal.prune_done(KEEP_DONE)
            in_use = {r.row.request.image or self.settings.task_image for r in self._runs.values()}
            await self.runtime.gc_images(
                in_use, {self.settings.task_image},
                self.settings.disk_high_watermark_percent, self.settings.disk_low_watermark_percent,
            )
        except Exception as exc:
            logger.warning("disk hygiene after a task failed: %s", exc, extra=self._extra)
