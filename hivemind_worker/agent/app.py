"""Assembles the real daemon from settings: identity, channel, task manager,
telemetry, monitor and notifier, then runs the Agent. The only place that knows
which concrete implementation backs each seam."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import psutil

from hivemind_worker.address import parse_master_address
from hivemind_worker.agent.daemon import Agent, AgentParts
from hivemind_worker.agent.facts import node_capacity
from hivemind_worker.config import Settings
from hivemind_worker.control.channel import open_channel
from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.identity import NodeIdentity, load_ca, load_identity
from hivemind_worker.runtime import DockerRuntime, GpuAllocator
from hivemind_worker.systemd.notify import SystemdNotifier
from hivemind_worker.tasks.manager import TaskManager

logger = logging.getLogger(__name__)


def _basic_sample(settings: Settings) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    try:
        disk_free = psutil.disk_usage(str(settings.state_dir)).free
    except OSError:
        disk_free = 0
    return {
        "time_ms": int(time.time() * 1000),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "memory_used_bytes": memory.total - memory.available,
        "memory_total_bytes": memory.total,
        "load1": psutil.getloadavg()[0],
        "disk_free_bytes": disk_free,
    }


async def build_agent(settings: Settings, reload: Callable[[], Settings] | None = None, identity: NodeIdentity | None = None) -> Agent:
    identity = identity or load_identity(settings.config_dir)
    address = parse_master_address(settings.master_url or identity.master)
    if settings.master_url is None:
        address = type(address)(address.host, address.port, identity.tls)
    ca_pem = load_ca(settings.config_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)

    async def sample() -> dict[str, Any]:
        return await asyncio.to_thread(_basic_sample, settings)

    parts = AgentParts(
        channel_factory=lambda: open_channel(address, ca_pem, settings.max_message_bytes),
        notifier=SystemdNotifier(),
        sample=sample,
        reload_settings=reload,
    )
    agent = Agent(settings, identity, parts)
    tasks = await _task_manager(settings, identity, agent)
    if tasks is not None:
        agent.attach_tasks(tasks)
    return agent


async def _task_manager(settings: Settings, identity: NodeIdentity, agent: Agent) -> TaskManager | None:
    """The task manager over real Docker, or None (and an error in the log) when
    Docker is not reachable: the node stays visible to the master, refuses tasks
    with the reason, and `hivemind-worker doctor` says what to fix."""
    runtime = DockerRuntime()
    try:
        version = await runtime.version()
        gpus = GpuAllocator(await runtime.gpu_inventory(), settings.max_gpus)
    except RuntimeUnavailable as exc:
        logger.error("tasks disabled: %s", exc, extra={"node_id": identity.node_id})
        runtime.close()
        return None
    logger.info("Docker %s, %d GPU(s)", version, gpus.total, extra={"node_id": identity.node_id})
    return TaskManager(
        settings, runtime, agent.router, identity.node_id,
        capacity=node_capacity(settings, gpus.total), gpus=gpus,
    )


async def run_agent(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    agent = await build_agent(settings, reload)
    await agent.serve()
