"""Removing a delivered task's traces: its container, its directory.

A root agent simply deletes the directory. A non-root agent (the packaged systemd
unit runs as ``hivemind-worker``) cannot delete what the task made as uid 1000
inside directories that are not its own, so a throwaway container - the task
image, as the task user, with the same hardening, no network - empties the
workspace first. Runs after the result and logs were acknowledged; a failure here
is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hivemind_worker.config import Settings
from hivemind_worker.errors import WorkerError
from hivemind_worker.runtime.spec import ContainerSpec
from hivemind_worker.tasks.journal import TaskRow
from hivemind_worker.tasks.model import NetworkPolicy
from hivemind_worker.tasks.workspace import TaskDirs

logger = logging.getLogger(__name__)
CLEANUP_TIMEOUT_S = 60.0


async def remove_traces(runtime: Any, settings: Settings, node_id: str, row: TaskRow, dirs: TaskDirs) -> None:
    extra = {"task_id": row.task_id, "node_id": node_id}
    if row.container_id:
        try:
            await runtime.remove(row.container_id)
        except WorkerError as exc:
            logger.warning("task %s: container not removed: %s", row.task_id, exc, extra=extra)
    if await asyncio.to_thread(dirs.remove):
        return
    spec = ContainerSpec(
        task_id=row.task_id, node_id=node_id, image=settings.task_image,
        command=("find", "/workspace", "-mindepth", "1", "-delete"), env={},
        workspace=dirs.workspace.resolve(), cpu_millicores=500, memory_bytes=64 * 1024**2,
        pids_limit=16, gpu_device_ids=(), network=NetworkPolicy.NONE, user=settings.task_user,
    )
    cid = ""
    try:
        cid = await runtime.create(spec)
        await runtime.start(cid)
        await asyncio.wait_for(runtime.wait(cid), CLEANUP_TIMEOUT_S)
    except (WorkerError, asyncio.TimeoutError) as exc:
        logger.warning("task %s: workspace cleanup container failed: %s", row.task_id, exc, extra=extra)
    finally:
        if cid:
            await runtime.remove(cid)
    if not await asyncio.to_thread(dirs.remove):
        logger.warning("task %s: %s could not be removed entirely", row.task_id, dirs.root, extra=extra)
