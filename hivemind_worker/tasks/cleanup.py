"""What a non-root agent needs the task user for, and removing a task's traces.

A root agent reads and deletes whatever the task made. A non-root agent (the
packaged systemd unit runs as ``hivemind-worker``) cannot read a file the task made
private, nor delete what the task made as uid 1000 inside directories that are not
the agent's. For both, a throwaway helper container - the task image, as the task
user, same hardening, no network, the same workspace - does the job: ``open_output``
makes the output readable before archiving, ``remove_traces`` empties the workspace
after delivery when a plain delete could not, ``free_workspace`` empties it at once
when the disk is full. Failures are logged, never fatal.

The helper starts through the image's run_task.sh like any task: by then the
bundle's top-level requirements.txt is gone or irrelevant (no network, and the
first delete pass removed the agent's own files), so it runs just the command.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from hivemind_worker.config import Settings
from hivemind_worker.errors import RuntimeUnavailable, WorkerError
from hivemind_worker.runtime.api import ContainerRuntime
from hivemind_worker.runtime.spec import ContainerSpec
from hivemind_worker.tasks.journal import TaskRow
from hivemind_worker.tasks.model import NetworkPolicy
from hivemind_worker.tasks.workspace import TaskDirs

logger = logging.getLogger(__name__)
HELPER_TIMEOUT_S = 60.0
# The engine is away (restarting): keep trying to remove the container this long, so a
# leftover cannot block the task's next attempt here (same container name).
REMOVE_WAIT_S = 60.0


async def remove_traces(runtime: ContainerRuntime, settings: Settings, node_id: str, row: TaskRow, dirs: TaskDirs) -> None:
    extra = {"task_id": row.task_id, "node_id": node_id}
    if row.container_id:
        await _remove_container(runtime, row.container_id, extra)
    if await asyncio.to_thread(dirs.remove):
        return
    await as_task_user(runtime, settings, node_id, row, dirs, ("find", "/workspace", "-mindepth", "1", "-delete"))
    if not await asyncio.to_thread(dirs.remove):
        logger.warning("task %s: %s could not be removed entirely", row.task_id, dirs.root, extra=extra)


async def _remove_container(runtime: ContainerRuntime, container_id: str, extra: dict) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + REMOVE_WAIT_S
    while True:
        try:
            await runtime.remove(container_id)
            return
        except RuntimeUnavailable as exc:
            if loop.time() >= give_up:
                logger.warning("task %s: container not removed: %s", extra["task_id"], exc, extra=extra)
                return
        except WorkerError as exc:
            logger.warning("task %s: container not removed: %s", extra["task_id"], exc, extra=extra)
            return
        await asyncio.sleep(1.0)


async def free_workspace(runtime: ContainerRuntime, settings: Settings, node_id: str, row: TaskRow, dirs: TaskDirs) -> None:
    """A full disk: delete the task's workspace now (its spool and result stay), through
    the helper when the task made what a non-root agent cannot delete."""
    await asyncio.to_thread(dirs.free_workspace)
    if not dirs.workspace.exists():
        return
    extra = {"task_id": row.task_id, "node_id": node_id}
    try:
        if row.container_id:  # stopped by now; the helper takes the container's name
            await runtime.remove(row.container_id)
        await as_task_user(runtime, settings, node_id, row, dirs, ("find", "/workspace", "-mindepth", "1", "-delete"))
    except WorkerError as exc:
        logger.warning("task %s: workspace not freed: %s", row.task_id, exc, extra=extra)
    await asyncio.to_thread(dirs.free_workspace)


def unreadable(root: Path) -> bool:
    """True if the agent cannot read some file or enter some directory under root."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda exc: None):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and not os.access(path, os.R_OK | os.X_OK):
                return True
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and not os.access(path, os.R_OK):
                return True
    return False


async def open_output(runtime: ContainerRuntime, settings: Settings, node_id: str, row: TaskRow, dirs: TaskDirs) -> None:
    """Before archiving: make the task's output readable to a non-root agent."""
    if os.geteuid() == 0 or not dirs.output.is_dir() or not await asyncio.to_thread(unreadable, dirs.output):
        return
    if row.container_id:  # the task has exited; the helper takes the container's name
        await runtime.remove(row.container_id)
    await as_task_user(runtime, settings, node_id, row, dirs, ("chmod", "-R", "a+rX", "/workspace/output"))


async def as_task_user(runtime: ContainerRuntime, settings: Settings, node_id: str, row: TaskRow, dirs: TaskDirs,
                       command: tuple[str, ...]) -> None:
    extra = {"task_id": row.task_id, "node_id": node_id}
    spec = ContainerSpec(
        task_id=row.task_id, node_id=node_id, image=settings.task_image, command=command, env={},
        workspace=dirs.workspace.resolve(), cpu_millicores=500, memory_bytes=64 * 1024**2,
        pids_limit=16, gpu_device_ids=(), network=NetworkPolicy.NONE, user=settings.task_user,
    )
    cid = ""
    try:
        cid = await runtime.create(spec)
        await runtime.start(cid)
        await asyncio.wait_for(runtime.wait(cid), HELPER_TIMEOUT_S)
    except (WorkerError, asyncio.TimeoutError) as exc:
        logger.warning("task %s: helper container %s failed: %s", row.task_id, command[0], exc, extra=extra)
    finally:
        if cid:
            await runtime.remove(cid)
