"""Per-task usage: CPU, memory and I/O attributed to a task's container, and GPU
processes mapped back to the container they run in.

Counters come from an injectable ``stats(container_id) -> ContainerCounters | None``:
by default ``CgroupReader`` reads the container's cgroup files (v1 or v2, cgroupfs or
systemd driver) - far cheaper than a Docker stats call, which blocks ~1 s per
container. ``counters_from_docker_stats`` adapts a docker-py ``stats(stream=False)``
dict for a runtime that prefers to pass its own. Read-only: nothing here touches a
container. Blocking file reads: call from a worker thread.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from hivemind_worker.telemetry.degrade import WarnOnce
from hivemind_worker.telemetry.sample import GpuSample, TaskUsage

logger = logging.getLogger(__name__)

_NO_LIMIT = 2**60  # cgroup v1 reports "no limit" as a huge page-aligned number
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")


@dataclass(frozen=True)
class ContainerCounters:
    cpu_ns: int  # cumulative CPU time of every process in the container
    memory_bytes: int | None = None  # working set (usage less inactive file cache)
    memory_limit_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


StatsSource = Callable[[str], "ContainerCounters | None"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _kv(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class CgroupReader:
    """Reads a Docker container's cgroup counters straight from /sys/fs/cgroup."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup")) -> None:
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()

    def _dir(self, controller: str | None, container_id: str) -> Path | None:
        bases = [self.root] if controller is None else [self.root / c for c in _V1_ALIASES[controller]]
        for base in bases:
            for rel in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
                if (base / rel).is_dir():
                    return base / rel
        return None

    def __call__(self, container_id: str) -> ContainerCounters | None:
        return self._v2(container_id) if self.v2 else self._v1(container_id)

    def _v1(self, cid: str) -> ContainerCounters | None:
        cpu_dir = self._dir("cpuacct", cid)
        if cpu_dir is None:
            return None
        usage = _read(cpu_dir / "cpuacct.usage")
        if usage is None:
            return None
        mem_dir = self._dir("memory", cid)
        mem = limit = None
        if mem_dir is not None:
            raw = _read(mem_dir / "memory.usage_in_bytes")
            stat = _kv(_read(mem_dir / "memory.stat"))
            if raw is not None:
                mem = max(0, int(raw) - stat.get("total_inactive_file", 0))
            raw_limit = _read(mem_dir / "memory.limit_in_bytes")
            if raw_limit is not None and int(raw_limit) < _NO_LIMIT:
                limit = int(raw_limit)
        rd = wr = None
        blk_dir = self._dir("blkio", cid)
        if blk_dir is not None:
            for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes"):
                text = _read(blk_dir / name)
                if text is not None:
                    rd, wr = _blkio_v1(text)
                    break
        return ContainerCounters(int(usage), mem, limit, rd, wr)

    def _v2(self, cid: str) -> ContainerCounters | None:
        d = self._dir(None, cid)
        if d is None:
            return None
        cpu = _kv(_read(d / "cpu.stat"))
        if "usage_usec" not in cpu:
            return None
        raw = _read(d / "memory.current")
        stat = _kv(_read(d / "memory.stat"))
        mem = max(0, int(raw) - stat.get("inactive_file", 0)) if raw is not None else None
        raw_limit = (_read(d / "memory.max") or "max").strip()
        limit = int(raw_limit) if raw_limit.isdigit() else None
        rd = wr = 0
        text = _read(d / "io.stat")
        for line in (text or "").splitlines():
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "rbytes":
                    rd += int(value)
                elif key == "wbytes":
                    wr += int(value)
        return ContainerCounters(cpu["usage_usec"] * 1000, mem, limit, rd if text is not None else None,
                                 wr if text is not None else None)


_V1_ALIASES = {
    "cpuacct": ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"),
    "memory": ("memory",),
    "blkio": ("blkio",),
}


def _blkio_v1(text: str) -> tuple[int, int]:
    rd = wr = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1] == "Read":
                rd += int(parts[2])
            elif parts[1] == "Write":
                wr += int(parts[2])
    return rd, wr


def counters_from_docker_stats(stats: Mapping) -> ContainerCounters | None:
    """Adapt docker-py's ``container.stats(stream=False)`` to ContainerCounters."""
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    if "total_usage" not in cpu:
        return None
    ms = stats.get("memory_stats") or {}
    mem = limit = None
    if "usage" in ms:
        inner = ms.get("stats") or {}
        mem = max(0, ms["usage"] - inner.get("total_inactive_file", inner.get("inactive_file", 0)))
        limit = ms.get("limit") if ms.get("limit", _NO_LIMIT) < _NO_LIMIT else None
    rd = wr = None
    entries = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive")
    if entries is not None:
        rd = sum(e["value"] for e in entries if e.get("op", "").lower() == "read")
        wr = sum(e["value"] for e in entries if e.get("op", "").lower() == "write")
    return ContainerCounters(int(cpu["total_usage"]), mem, limit, rd, wr)


def container_of_pid(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The Docker container id a host pid runs in, from /proc/<pid>/cgroup."""
    text = _read(proc_root / str(pid) / "cgroup")
    for line in (text or "").splitlines():
        if "docker" in line:
            match = _CONTAINER_ID.search(line)
            if match:
                return match.group(1)
    return None


class TaskUsageTracker:
    """Turns cumulative container counters into per-task usage between samples."""

    def __init__(self, stats: StatsSource | None = None, proc_root: Path = Path("/proc"),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stats = stats or CgroupReader()
        self._proc_root = proc_root
        self._clock = clock
        self._prev: dict[str, tuple[int, float]] = {}  # container id -> (cpu_ns, when)
        self._warn = WarnOnce(logger)

    def usage(self, tasks: Mapping[str, str], gpus: Iterable[GpuSample] = ()) -> tuple[TaskUsage, ...]:
        """``tasks`` maps task id -> container id (full or the 12-char short id)."""
        gpu_by_container = self._gpu_memory_by_container(gpus) if tasks else {}
        now = self._clock()
        out = []
        for task_id, cid in tasks.items():
            try:
                counters = self._stats(cid)
            except Exception as exc:  # a vanished container or an unreadable file
                self._warn(f"stats:{type(exc).__name__}", "task telemetry: cannot read container stats (%s)", exc)
                counters = None
            if counters is None:
                out.append(TaskUsage(task_id=task_id, container_id=cid))
                continue
            cpu_percent = None
            prev = self._prev.get(cid)
            if prev is not None and now > prev[1] and counters.cpu_ns >= prev[0]:
                cpu_percent = round((counters.cpu_ns - prev[0]) / 1e9 / (now - prev[1]) * 100.0, 2)
            self._prev[cid] = (counters.cpu_ns, now)
            gpu_mem, gpu_uuids = gpu_by_container.get(cid[:12], (None, ()))
            out.append(TaskUsage(
                task_id=task_id, container_id=cid, cpu_percent=cpu_percent,
                cpu_seconds_total=counters.cpu_ns / 1e9, memory_bytes=counters.memory_bytes,
                memory_limit_bytes=counters.memory_limit_bytes, io_read_bytes=counters.io_read_bytes,
                io_write_bytes=counters.io_write_bytes, gpu_memory_bytes=gpu_mem, gpu_uuids=gpu_uuids,
            ))
        for gone in set(self._prev) - set(tasks.values()):
            del self._prev[gone]
        return tuple(out)

    def _gpu_memory_by_container(self, gpus: Iterable[GpuSample]) -> dict[str, tuple[int, tuple[str, ...]]]:
        found: dict[str, tuple[int, tuple[str, ...]]] = {}
        for gpu in gpus:
            for proc in gpu.processes:
                cid = container_of_pid(proc.pid, self._proc_root)
                if cid is None:
                    continue
                mem, uuids = found.get(cid[:12], (0, ()))
                found[cid[:12]] = (mem + (proc.used_memory_bytes or 0),
                                   uuids if gpu.uuid in uuids else uuids + (gpu.uuid,))
        return found
