"""Admission: does a task request fit the node right now? Pure arithmetic, no I/O.

A refusal names the first check that fails, with numbers ("needs 4.0 CPUs, 1.5
free"), and says whether it is for good or for now. Never here (TaskRejected, an
outcome): a request larger than the whole node (rejected, never clamped) or
malformed. Not now (TaskDeferred; the master keeps the task queued): the node
drains, the host is under pressure, the disk is low, every slot under
``max_concurrent_tasks`` is taken, or tasks already admitted hold the capacity.
This module must not touch Docker, the journal or the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from hivemind_worker.errors import TaskDeferred, TaskRejected
from hivemind_worker.tasks.model import Resources, TaskRequest

# What a request that names no CPU or memory gets. A container without limits is
# never started: "unspecified" means a modest default, capped by the node.
DEFAULT_CPU_MILLICORES = 1000
DEFAULT_MEMORY_BYTES = 512 * 1024**2


def _cpus(millicores: int) -> str:
    return f"{millicores / 1000:.1f} CPU" + ("" if millicores == 1000 else "s")


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def _gpus(n: int) -> str:
    return f"{n} GPU" + ("" if n == 1 else "s")


def effective_resources(req: TaskRequest, capacity: Resources) -> Resources:
    """The resources a task is given: its request, or the defaults where it named none."""
    r = req.resources
    cpu = r.cpu_millicores or min(DEFAULT_CPU_MILLICORES, capacity.cpu_millicores)
    mem = r.memory_bytes or min(DEFAULT_MEMORY_BYTES, capacity.memory_bytes)
    return Resources(cpu, mem, max(0, r.gpu_count))


def check(
    need: Resources,
    *,
    capacity: Resources,
    reserved: Resources,
    active: int,
    max_concurrent: int,
    drain: str = "",
    pressure: str = "",
    disk: str = "",
) -> None:
    """Raise TaskRejected (never here) or TaskDeferred (not now) with the reason.
    ``drain``, ``pressure``, ``disk``: why the node takes nothing now ("" = it may)."""
    if need.cpu_millicores < 0 or need.memory_bytes < 0 or need.gpu_count < 0:
        raise TaskRejected("invalid request: negative resources")
    # Larger than the whole node: this node can never run it.
    if need.gpu_count and capacity.gpu_count == 0:
        raise TaskRejected(
            f"needs {_gpus(need.gpu_count)}, the node has none (no NVIDIA GPU or no NVIDIA "
            "container runtime); it is never run on CPU instead"
        )
    for have, want, label in (
        (capacity.cpu_millicores, need.cpu_millicores, _cpus),
        (capacity.memory_bytes, need.memory_bytes, _gib),
        (capacity.gpu_count, need.gpu_count, _gpus),
    ):
        if want > have:
            raise TaskRejected(f"needs {label(want)}, the node has only {label(have)} in all")
    if drain:
        raise TaskDeferred(f"node draining ({drain}): it accepts no new tasks")
    if pressure:
        raise TaskDeferred(f"node under pressure ({pressure}); try another node")
    if disk:
        raise TaskDeferred(f"node low on disk ({disk})")
    if active >= max_concurrent:
        raise TaskDeferred(f"node busy: {active} of {max_concurrent} task slots in use")
    free = capacity - reserved
    if need.cpu_millicores > free.cpu_millicores:
        raise TaskDeferred(f"needs {_cpus(need.cpu_millicores)}, {free.cpu_millicores / 1000:.1f} free")
    if need.memory_bytes > free.memory_bytes:
        raise TaskDeferred(f"needs {_gib(need.memory_bytes)} memory, {_gib(free.memory_bytes)} free")
    if need.gpu_count > free.gpu_count:
        raise TaskDeferred(f"needs {_gpus(need.gpu_count)}, {free.gpu_count} free")


@dataclass
class Ledger:
    """Resources reserved by admitted tasks until their container has exited."""

    capacity: Resources
    _held: dict[str, Resources]

    @classmethod
    def empty(cls, capacity: Resources) -> "Ledger":
        return cls(capacity, {})

    @property
    def reserved(self) -> Resources:
        total = Resources()
        for r in self._held.values():
            total = total + r
        return total

    @property
    def active(self) -> int:
        return len(self._held)

    def free(self) -> Resources:
        return self.capacity - self.reserved

    def hold(self, task_id: str, need: Resources) -> None:
        self._held[task_id] = need

    def release(self, task_id: str) -> None:
        self._held.pop(task_id, None)

    def holds(self, task_id: str) -> bool:
        return task_id in self._held
