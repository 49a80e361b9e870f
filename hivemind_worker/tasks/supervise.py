"""A running task's container, watched (TaskRun's RUNNING step; runner.py has the
rest of the life): follow its logs, wait for its exit, kill it at its timeout, on
cancel() or when its disk watch says so (disk.py), and decide the verdict.

An engine restart breaks the wait and the log stream (RuntimeUnavailable). The
watch then asks Docker until it answers again and looks at the container:

- still running (the engine has ``"live-restore": true``): follow the logs again from
  the spool's resume point (no line twice), wait again; the task finishes normally;
- exited with 143 or 137 (the engine stopped it: SIGTERM, then SIGKILL after its
  grace) or gone: LOST, with the cause; not the task's fault, the master may rerun it;
- exited otherwise: it ended by itself meanwhile; its own verdict.

An engine restart while no agent was watching cannot be told from the task's own
exit (nothing on the engine records who stopped a container): there the exit code
is the verdict. A container killed by someone else (137/143, no kill of ours) is
looked up again after VANISH_GRACE_S: gone (``docker rm -f``) is LOST too.

Nothing here talks to the master or the journal except through the TaskRun.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hivemind_worker.errors import RuntimeUnavailable, WorkerError
from hivemind_worker.runtime.spec import EXIT_DEPS_FAILED, EXIT_NO_ENTRYPOINT, ContainerInfo
from hivemind_worker.tasks.cleanup import free_workspace
from hivemind_worker.tasks.disk import DiskWatch
from hivemind_worker.tasks.logpump import pump
from hivemind_worker.tasks.model import LogStream, TaskStatus
from hivemind_worker.tasks import usage

logger = logging.getLogger(__name__)

# After the exit, the log reader gets as long as it keeps bringing lines: a task that
# printed a lot on a busy host can take minutes to read back, and every line counts.
# A reader that brought nothing for this long is stalled.
LOG_IDLE_S = 30.0
ENGINE_POLL_S = 1.0  # while the engine is away: ask again after this (doubling, up to 5 s)
ENGINE_STOP_CODES = (143, 137)  # what a container stopped by a shutting-down engine exits with
DISK_KILLS = ("disk limit", "node disk full")
VANISH_GRACE_S = 1.0  # a container killed by someone else: time for `docker rm -f` to finish
VANISHED = ("lost: the task's container vanished (removed outside the agent, or with the Docker "
            "engine's state); not the task's fault")


async def watch(run: Any, container: ContainerInfo | None) -> None:
    """Carry a RUNNING task to its verdict (``run._finish``), measuring what it uses
    (usage.py) until then; the figures are on ``run.row`` when this returns."""
    measuring = usage.start(run, container)
    try:
        await _watch(run, container)
    finally:
        run.ctx.disk_usage.by_task.pop(run.task_id, None)  # its disk watch's last measurement
        await usage.settle(run, measuring)


async def _watch(run: Any, container: ContainerInfo | None) -> None:
    rt, cid = run.ctx.runtime, run.row.container_id
    run.open_spool()
    if container is not None and not container.running and not container.started_at_ms:
        # Journaled RUNNING, killed before start(): finish what the journal says.
        await rt.start(cid)
        container = None
    engine_lost = False
    found, exit_info = container, None  # found: what Docker had for it, if we looked
    while exit_info is None:
        if found is not None and not found.running:
            exit_info = found  # it exited while no agent was watching
            await _collect_logs(run)  # what was not spooled yet
            break
        try:
            exit_info = await _follow(run)
        except WorkerError as exc:
            if isinstance(exc, RuntimeUnavailable):
                logger.warning("task %s: the Docker engine went away while the task ran (%s); waiting for it",
                               run.task_id, exc, extra=run._extra)
                engine_lost = True
                found = await _engine_back(run)
            elif (found := await rt.inspect(cid)) is not None:
                raise  # not the engine, and the container is there: life() retries the step
            if found is None:
                await run._finish(TaskStatus.LOST, -1, VANISHED)
                return
    code, oom = exit_info.exit_code or 0, bool(exit_info.oom_killed)
    if not engine_lost and not oom and code in ENGINE_STOP_CODES and not run.row.kill_reason:
        # Killed, not by us: a task that signals itself, `docker kill`, `docker rm -f`
        # (the container is gone a moment later) or an engine going away.
        await asyncio.sleep(VANISH_GRACE_S)
        try:
            if await rt.inspect(cid) is None:
                await run._finish(TaskStatus.LOST, -1, VANISHED)
                return
        except RuntimeUnavailable:
            engine_lost = True
            if await _engine_back(run) is None:
                await run._finish(TaskStatus.LOST, -1, VANISHED)
                return
    if engine_lost and not oom and code in ENGINE_STOP_CODES and not run.row.kill_reason:
        status, reason = TaskStatus.LOST, (f"lost: the Docker engine restarted and stopped the container "
                                           f"(exit code {code}); not the task's fault")
    else:
        status, reason = verdict(run, code, oom)
    if reason.startswith("node disk full"):  # room for the logs and the exit record
        await free_workspace(rt, run.ctx.settings, run.ctx.node_id, run.row, run.dirs)
    await run._finish(status, code, reason)


async def _follow(run: Any) -> Any:
    """Follow logs and wait for the exit while supervising; the ExitInfo."""
    rt, cid = run.ctx.runtime, run.row.container_id
    follower = asyncio.create_task(pump(rt, cid, run.spool, run.sender))
    waiter = asyncio.create_task(rt.wait(cid))
    disk = DiskWatch(run.task_id, run.dirs.root, run.ctx.settings, run.ctx.disk_usage,
                     lambda reason: kill_for(run, reason), lambda: run.spool.disk_error)
    watcher = asyncio.create_task(disk.run())
    try:
        exit_info = await supervise(run, waiter)
        try:
            if await _while_progress(run, follower):
                return exit_info
            logger.warning("task %s: log stream stalled after exit; reading the rest again", run.task_id,
                           extra=run._extra)
        except RuntimeUnavailable:
            raise  # the engine went away: _watch waits for it, then reads the rest
        except WorkerError as exc:
            logger.warning("task %s: log stream failed after exit (%s); reading the rest again", run.task_id, exc,
                           extra=run._extra)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await _collect_logs(run)  # from where the spool ends, as after a restart
        return exit_info
    finally:
        for t in (waiter, follower, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(waiter, follower, watcher, return_exceptions=True)


async def _engine_back(run: Any) -> ContainerInfo | None:
    """Ask Docker for the container until the engine answers."""
    delay = ENGINE_POLL_S
    while True:
        try:
            return await run.ctx.runtime.inspect(run.row.container_id)
        except RuntimeUnavailable as exc:
            logger.info("task %s: Docker engine still away: %s", run.task_id, exc, extra=run._extra)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _while_progress(run: Any, reader: asyncio.Task) -> bool:
    """Wait for ``reader`` while it spools lines: True when it ended (its error is
    raised), False when it brought nothing for LOG_IDLE_S."""
    while True:
        before = run.spool.last_seq
        done, _ = await asyncio.wait({reader}, timeout=LOG_IDLE_S)
        if done:
            reader.result()
            return True
        if run.spool.last_seq == before:
            return False


async def _collect_logs(run: Any) -> None:
    """Read what Docker holds of a stopped container's output into the spool (waiting
    for an engine that is restarting); say so in the log itself when Docker stops
    giving it."""
    while True:
        why = await _read_rest(run)
        if why != "engine away":
            break
        logger.info("task %s: the Docker engine is away; reading the last lines once it is back", run.task_id,
                    extra=run._extra)
        if await _engine_back(run) is None:
            why = "the task's container vanished before its output was read back"
            break
    if why:
        logger.warning("task %s: %s", run.task_id, why, extra=run._extra)
        run.spool.add(LogStream.SYSTEM, f"[hivemind] {why}; lines after this point may be missing",
                      int(run.ctx.clock() * 1000))


async def _read_rest(run: Any) -> str:
    """One read of the container's output from where the spool ends: "" when it
    reached the end, "engine away", or why it stopped."""
    reader = asyncio.create_task(pump(run.ctx.runtime, run.row.container_id, run.spool, run.sender))
    try:
        if await _while_progress(run, reader):
            return ""
        return f"Docker gave no more of the task's output for {LOG_IDLE_S:.0f} s"
    except RuntimeUnavailable:
        return "engine away"
    except Exception as exc:
        return f"reading the task's output back from Docker failed: {exc}"
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def kill_for(run: Any, reason: str) -> None:
    """Kill the task with ``reason`` (journaled when the journal can take it: on a full
    disk it may not, and the kill must happen all the same)."""
    if run.row.kill_reason:
        return
    try:
        await run._record(kill_reason=reason)
    except (WorkerError, OSError) as exc:
        logger.warning("task %s: kill reason not journaled (%s)", run.task_id, exc, extra=run._extra)
        run.row = run.row.with_(kill_reason=reason)
    logger.warning("task %s: %s", run.task_id, reason, extra=run._extra)
    run.request_kill(reason)


async def supervise(run: Any, waiter: asyncio.Task) -> Any:
    """Wait for the container's exit; kill it at the timeout or on request."""
    timeout = run.row.request.timeout_s or run.ctx.settings.task_timeout_s
    deadline = run.row.started_ms / 1000 + timeout
    killer = asyncio.create_task(run._kill.wait())
    try:
        while not waiter.done():
            if run.row.kill_reason:
                await run.ctx.runtime.kill(run.row.container_id)
                await asyncio.wait({waiter})
                break
            remaining = max(0.0, deadline - run.ctx.clock())
            await asyncio.wait({waiter, killer}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                break
            if not run.row.kill_reason and run.ctx.clock() >= deadline:
                await run._record(kill_reason=f"timeout: ran longer than {timeout:g} s; killed")
        return waiter.result()
    finally:
        killer.cancel()


def verdict(run: Any, code: int, oom: bool) -> tuple[TaskStatus, str]:
    kill = run.row.kill_reason
    if kill.startswith("cancel"):
        return TaskStatus.CANCELLED, kill
    if kill.startswith("timeout"):
        return TaskStatus.TIMED_OUT, kill
    if kill.startswith(DISK_KILLS):
        return TaskStatus.FAILED, kill
    if oom:
        limit = f"{run.resources.memory_bytes / 1024**2:.0f} MiB"
        return TaskStatus.OOM_KILLED, f"out of memory: the task passed its {limit} limit and was killed"
    if code == EXIT_DEPS_FAILED:
        return TaskStatus.FAILED, "dependency install failed: pip could not install requirements.txt (see the log)"
    if code == EXIT_NO_ENTRYPOINT:
        return TaskStatus.FAILED, "no entry point: no command given and the entry point file is missing"
    return TaskStatus.EXITED, f"exited with code {code}"
