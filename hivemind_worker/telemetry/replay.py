"""Recorded psutil and NVML outputs, and sources that replay them.

A recording is JSON: ``{"psutil": {...}, "nvml": {...}}`` holding what the real calls
returned (namedtuples as objects, errors as ``{"error": "NVML_ERROR_..."}``).
``ReplayPsutil`` / ``ReplayNvml`` answer the same calls the collectors make, so the
collectors' real code runs on them. Record a machine with:

    python -m hivemind_worker.telemetry.replay OUT.json [--disk NAME=PATH ...]

Test support only in spirit, but shipped so that an operator can attach a recording
of an odd machine to a bug report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping


def _ns(value: Any) -> Any:
    return SimpleNamespace(**value) if isinstance(value, dict) else value


class ReplayPsutil:
    """Answers psutil's calls from a recording. ``cpu_times_percpu`` is a list of
    successive readings, replayed in turn (the last one repeats)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self._cpu_reads = 0

    def _get(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise NotImplementedError(f"{key} not recorded")
        if isinstance(value, dict) and "error" in value:
            raise PermissionError(value["error"])
        return value

    def cpu_count(self, logical: bool = True) -> int:
        return self._get("cpu_count")

    def cpu_times(self, percpu: bool = False) -> Any:
        reads = self._get("cpu_times_percpu")
        row = reads[min(self._cpu_reads, len(reads) - 1)]
        self._cpu_reads += 1
        return [_ns(core) for core in row] if percpu else None

    def getloadavg(self) -> tuple[float, float, float]:
        return tuple(self._get("getloadavg"))

    def virtual_memory(self) -> SimpleNamespace:
        return _ns(self._get("virtual_memory"))

    def swap_memory(self) -> SimpleNamespace:
        return _ns(self._get("swap_memory"))

    def disk_usage(self, path: str) -> SimpleNamespace:
        disks = self._get("disk_usage")
        if path not in disks:
            raise FileNotFoundError(path)
        return _ns(disks[path])

    def net_io_counters(self, pernic: bool = False) -> Any:
        nics = {k: _ns(v) for k, v in self._get("net_io_counters_pernic").items()}
        return nics if pernic else None


class ReplayNvml:
    """Answers the pynvml calls GpuCollector makes, from a recording; errors are
    raised as the real ``pynvml.NVMLError`` subclasses."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        import pynvml

        self._pynvml = pynvml
        self.data = data
        self.NVMLError = pynvml.NVMLError
        self.NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
        self.init_calls = 0
        self.shutdown_calls = 0

    def _raise(self, code_name: str) -> None:
        raise self._pynvml.NVMLError(getattr(self._pynvml, code_name))

    def _value(self, handle: int, key: str) -> Any:
        value = self.data["devices"][handle].get(key, {"error": "NVML_ERROR_NOT_SUPPORTED"})
        if isinstance(value, dict) and "error" in value:
            self._raise(value["error"])
        return value

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.data.get("init_error"):
            self._raise(self.data["init_error"])

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.data.get("driver_version", "")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.data.get("devices", []))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._value(h, "name")

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._value(h, "uuid")

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return _ns(self._value(h, "utilization"))

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return _ns(self._value(h, "memory"))

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self._value(h, "temperature")

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._value(h, "power_usage_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return self._value(h, "power_limit_mw")

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return [_ns(p) for p in self._value(h, "processes")]


def _error_name(exc: BaseException) -> str:
    """NVML_ERROR_* for an NVMLError (by its code), else the exception's class name."""
    code = getattr(exc, "value", None)
    nvml = sys.modules.get("pynvml")
    if code is not None and nvml is not None:
        for name in dir(nvml):
            if name.startswith("NVML_ERROR_") and getattr(nvml, name) == code:
                return name
    return type(exc).__name__


def _record_call(fn, convert=lambda x: x) -> Any:
    try:
        return convert(fn())
    except Exception as exc:
        return {"error": _error_name(exc)}


def record_psutil(psutil: Any, disk_paths: Mapping[str, str], cpu_reads: int = 3) -> dict:
    import time

    reads = []
    for i in range(cpu_reads):
        if i:
            time.sleep(0.5)
        reads.append([t._asdict() for t in psutil.cpu_times(percpu=True)])
    return {
        "cpu_count": psutil.cpu_count(logical=True),
        "cpu_times_percpu": reads,
        "getloadavg": list(psutil.getloadavg()),
        "virtual_memory": psutil.virtual_memory()._asdict(),
        "swap_memory": psutil.swap_memory()._asdict(),
        "disk_usage": {p: _record_call(lambda p=p: psutil.disk_usage(p), lambda r: r._asdict())
                       for p in disk_paths.values()},
        "net_io_counters_pernic": {k: v._asdict() for k, v in psutil.net_io_counters(pernic=True).items()},
        "disk_paths": dict(disk_paths),
    }


def record_nvml(nvml: Any) -> dict:
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return {"init_error": _error_name(exc), "devices": []}
    try:
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            attrs = lambda o: {k: getattr(o, k) for k in ("gpu", "memory", "total", "used", "free") if hasattr(o, k)}
            devices.append({
                "name": _record_call(lambda: nvml.nvmlDeviceGetName(h)),
                "uuid": _record_call(lambda: nvml.nvmlDeviceGetUUID(h)),
                "utilization": _record_call(lambda: nvml.nvmlDeviceGetUtilizationRates(h), attrs),
                "memory": _record_call(lambda: nvml.nvmlDeviceGetMemoryInfo(h), attrs),
                "temperature": _record_call(lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                "power_usage_mw": _record_call(lambda: nvml.nvmlDeviceGetPowerUsage(h)),
                "power_limit_mw": _record_call(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h)),
                "processes": _record_call(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(h),
                                          lambda ps: [{"pid": p.pid, "usedGpuMemory": p.usedGpuMemory} for p in ps]),
            })
        return {"init_error": None, "driver_version": _record_call(nvml.nvmlSystemGetDriverVersion),
                "devices": devices}
    finally:
        nvml.nvmlShutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record this machine's psutil and NVML outputs as JSON.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--disk", action="append", default=[], help="NAME=PATH (repeatable)")
    args = parser.parse_args(argv)
    import psutil
    import pynvml

    disks = dict(d.split("=", 1) for d in args.disk) or {"workspace": "/var/lib/hivemind-worker",
                                                         "docker": "/var/lib/docker"}
    data = {"psutil": record_psutil(psutil, disks), "nvml": record_nvml(pynvml)}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
