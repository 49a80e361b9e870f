"""GPU figures through NVML (nvidia-ml-py's ``pynvml``), never by parsing nvidia-smi.

The NVML module is injectable: production passes nothing (``pynvml`` is imported
once the driver's library loads: a CPU node never pays for it), tests pass
``replay.ReplayNvml`` built from recorded outputs. Degrades: no library,
no driver or no permission gives no GPUs and ONE warning; a field a device does not
support is ``None`` with one warning per field. NVML is retried at most every
``retry_s`` seconds, so a driver installed later is picked up without a restart.
Blocking: call ``sample()`` from a worker thread.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any, Callable

from hivemind_worker.telemetry.degrade import WarnOnce
from hivemind_worker.telemetry.sample import GpuProcess, GpuSample

logger = logging.getLogger(__name__)


NVML_LIBRARY = "libnvidia-ml.so.1"  # what pynvml loads on Linux


def load_pynvml() -> Any:
    """``pynvml`` where the NVIDIA driver's library loads; OSError where it does not.
    Checked first because the module alone is ~3 MB resident, kept for the daemon's
    life, on CPU nodes that can never use it (issue 13: a small idle node)."""
    ctypes.CDLL(NVML_LIBRARY)
    import pynvml

    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    def __init__(self, nvml: Any = None, retry_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml  # None: pynvml, loaded by _ensure_init once the driver is there
        self._retry_s = retry_s
        self._clock = clock
        self._warn = WarnOnce(logger)
        self._initialised = False
        self._next_try = 0.0
        self.driver_version: str | None = None
        self.unavailable_reason: str | None = None

    def _ensure_init(self) -> bool:
        if self._initialised:
            return True
        now = self._clock()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry_s
        try:
            if self._nvml is None:
                self._nvml = load_pynvml()
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError (library, driver, permission) or OSError
            self.unavailable_reason = f"NVML unavailable: {exc}"
            self._warn("init", "GPU telemetry off: NVML cannot start (%s); reporting without GPUs", exc)
            return False
        self._initialised = True
        self.unavailable_reason = None
        try:
            self.driver_version = _text(self._nvml.nvmlSystemGetDriverVersion())
        except Exception:
            self.driver_version = None
        return True

    def _field(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            self._warn(f"field:{name}", "GPU telemetry: cannot read %s (%s); reporting without it", name, exc)
            return None

    def sample(self) -> tuple[GpuSample, ...]:
        if not self._ensure_init():
            return ()
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as exc:
            self._warn("count", "GPU telemetry: cannot count devices (%s); reporting without GPUs", exc)
            return ()
        gpus = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                name = _text(nv.nvmlDeviceGetName(handle))
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
            except Exception as exc:  # a lost GPU must not hide the others
                self._warn(f"device:{index}", "GPU telemetry: device %d unreadable (%s)", index, exc)
                continue
            gpus.append(self._device(index, handle, name, uuid))
        return tuple(gpus)

    def _device(self, index: int, handle: Any, name: str, uuid: str) -> GpuSample:
        nv = self._nvml
        util = self._field("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(handle))
        mem = self._field("memory", lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        temp = self._field("temperature", lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        power_mw = self._field("power", lambda: nv.nvmlDeviceGetPowerUsage(handle))
        limit_mw = self._field("power_limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle))
        procs = self._field("processes", lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        return GpuSample(
            index=index,
            name=name,
            uuid=uuid,
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_utilization_percent=float(util.memory) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            processes=tuple(
                GpuProcess(pid=int(p.pid), used_memory_bytes=getattr(p, "usedGpuMemory", None)) for p in procs
            ),
        )

    def close(self) -> None:
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._initialised = False
