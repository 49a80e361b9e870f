"""One telemetry sample of the whole node: host + GPUs + the tasks' containers.

``TelemetryCollector.sample(tasks)`` is blocking (psutil, NVML, cgroup files); the
agent calls it with ``asyncio.to_thread`` once per report interval. Every source is
injectable so tests run on recorded samples (see ``replay.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

from hivemind_worker.telemetry.containers import StatsSource, TaskUsageTracker
from hivemind_worker.telemetry.gpu import GpuCollector
from hivemind_worker.telemetry.host import HostCollector
from hivemind_worker.telemetry.sample import TelemetrySample

DEFAULT_DOCKER_ROOT = Path("/var/lib/docker")


class TelemetryCollector:
    def __init__(
        self,
        workspace_dir: Path,
        docker_root: Path | None = DEFAULT_DOCKER_ROOT,
        *,
        psutil_module: Any = None,
        nvml: Any = None,
        container_stats: StatsSource | None = None,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        disks = {"workspace": Path(workspace_dir)}
        if docker_root is not None:
            disks["docker"] = Path(docker_root)
        self.host = HostCollector(psutil_module, disks)
        self.gpu = GpuCollector(nvml, clock=monotonic)
        self.tasks = TaskUsageTracker(container_stats, proc_root=proc_root, clock=monotonic)
        self._clock = clock

    def sample(self, tasks: Mapping[str, str] | None = None) -> TelemetrySample:
        """``tasks``: task id -> full container id of every running task."""
        host = self.host.sample()
        gpus = self.gpu.sample()
        usage = self.tasks.usage(tasks or {}, gpus)
        notes = (self.gpu.unavailable_reason,) if self.gpu.unavailable_reason else ()
        return TelemetrySample(
            time_ms=int(self._clock() * 1000), host=host, gpus=gpus, tasks=usage,
            gpu_driver_version=self.gpu.driver_version, notes=notes,
        )

    def close(self) -> None:
        self.gpu.close()
