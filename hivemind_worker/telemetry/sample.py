"""The values a telemetry sample holds, as plain frozen dataclasses.

Units are in the field names. ``None`` means "this source could not tell" (no
permission, not supported by the device), never zero. ``to_dict()`` gives the JSON
shape the monitor, the history and the session report use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DiskUsage:
    name: str  # "workspace", "docker"
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float


@dataclass(frozen=True)
class NetCounters:
    bytes_sent: int
    bytes_recv: int
    packets_sent: int
    packets_recv: int


@dataclass(frozen=True)
class HostSample:
    cpu_count: int
    cpu_percent: float | None  # whole machine, 0-100
    cpu_per_core_percent: tuple[float, ...] = ()
    load_1m: float | None = None
    load_5m: float | None = None
    load_15m: float | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_available_bytes: int | None = None
    memory_percent: float | None = None
    swap_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    disks: tuple[DiskUsage, ...] = ()
    net: NetCounters | None = None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None
    task_id: str | None = None  # set when the pid belongs to a task's container


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    uuid: str
    utilization_percent: float | None = None
    memory_utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class TaskUsage:
    """What one task's container consumed; CPU in percent of ONE core (docker stats
    convention: a container limited to half a core and busy shows 50)."""

    task_id: str
    container_id: str
    cpu_percent: float | None = None  # average since the previous sample
    cpu_seconds_total: float | None = None
    memory_bytes: int | None = None  # working set: usage less inactive page cache
    memory_limit_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    gpu_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TelemetrySample:
    time_ms: int
    host: HostSample
    gpus: tuple[GpuSample, ...] = ()
    tasks: tuple[TaskUsage, ...] = ()
    gpu_driver_version: str | None = None
    notes: tuple[str, ...] = field(default=())  # what could not be measured, for operators

    @property
    def gpu_percent(self) -> float:
        """Mean utilisation over the GPUs that report it; 0 without GPUs."""
        values = [g.utilization_percent for g in self.gpus if g.utilization_percent is not None]
        return sum(values) / len(values) if values else 0.0

    def to_dict(self) -> dict:
        return asdict(self)
