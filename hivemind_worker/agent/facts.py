"""What a node tells the master about itself (NodeFacts) and what it offers."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import psutil

from hivemind_worker import __version__
from hivemind_worker.config import Settings
from hivemind_worker.control.enroll import GpuFact, NodeFacts
from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.tasks.model import Resources

# What the host keeps for itself (the agent, Docker, the OS) when no cap is set.
MEMORY_RESERVE_BYTES = 512 * 1024 * 1024


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def host_facts() -> dict:
    return {
        "hostname": socket.gethostname(),
        "cpu_cores": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "agent_version": __version__,
        "os": os_name(),
        "arch": platform.machine(),
    }


def node_capacity(settings: Settings, gpu_count: int) -> Resources:
    """What the node offers to tasks: the host less a reserve, within the caps."""
    cores = os.cpu_count() or 1
    cpus = min(cores, settings.max_cpus) if settings.max_cpus > 0 else cores
    memory = max(psutil.virtual_memory().total - MEMORY_RESERVE_BYTES, 0)
    if settings.max_memory_bytes > 0:
        memory = min(memory, settings.max_memory_bytes)
    gpus = gpu_count if settings.max_gpus < 0 else min(gpu_count, settings.max_gpus)
    return Resources(cpu_millicores=int(cpus * 1000), memory_bytes=memory, gpu_count=gpus)


async def gather_facts(runtime=None) -> NodeFacts:
    """NodeFacts for enrollment. Docker and GPU facts come from the runtime adapter
    when given; a node without Docker can still enroll (it will refuse tasks)."""
    docker_version, nvidia = "", False
    gpus: tuple[GpuFact, ...] = ()
    if runtime is not None:
        try:
            docker_version = await runtime.version()
            inventory = await runtime.gpu_inventory()
            nvidia = inventory.nvidia_runtime
            gpus = tuple(GpuFact(index=g.index, uuid=g.uuid, name=g.name, memory_bytes=g.memory_bytes)
                         for g in inventory.devices())
        except RuntimeUnavailable:
            pass
    return NodeFacts(**host_facts(), docker_version=docker_version, nvidia_runtime=nvidia, gpus=gpus)
