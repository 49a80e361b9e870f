"""Host figures (CPU, load, memory, swap, disks, network) from a psutil-shaped source.

The source is the ``psutil`` module itself in production and a replay of recorded
outputs in tests (``replay.ReplayPsutil``); both answer the same few calls. Blocking
(psutil reads /proc): call ``sample()`` from a worker thread, not the event loop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from hivemind_worker.telemetry.degrade import WarnOnce
from hivemind_worker.telemetry.sample import DiskUsage, HostSample, NetCounters

logger = logging.getLogger(__name__)

# Interfaces whose traffic is not the node's: loopback and the veth halves Docker
# makes per container (a task's traffic is counted once, on the bridge or uplink).
_SKIP_NIC_PREFIXES = ("lo", "veth")
_MIN_CPU_WINDOW_S = 0.1


def _times(t: Any) -> tuple[float, float]:
    """(total, busy) seconds of one CPU, as psutil computes them for cpu_percent()."""
    total = sum(getattr(t, f) for f in t._fields) if hasattr(t, "_fields") else sum(vars(t).values())
    # guest time is already counted in user/nice on Linux
    total -= getattr(t, "guest", 0) + getattr(t, "guest_nice", 0)
    return total, total - t.idle - getattr(t, "iowait", 0)


def _busy_percent(before: Any, after: Any) -> float:
    t0, b0 = _times(before)
    t1, b1 = _times(after)
    if t1 <= t0:
        return 0.0
    return round(min(100.0, max(0.0, (b1 - b0) / (t1 - t0) * 100.0)), 1)


class HostCollector:
    def __init__(self, psutil_module: Any = None, disk_paths: Mapping[str, Path] | None = None) -> None:
        if psutil_module is None:
            import psutil

            psutil_module = psutil
        self._ps = psutil_module
        self._disk_paths = dict(disk_paths or {})
        self._warn = WarnOnce(logger)
        # CPU use is computed from our own cpu_times() snapshots, not psutil.cpu_percent():
        # that keeps ONE module-wide baseline, which any other caller in the process (the
        # task manager's pressure check does) resets, leaving us near-empty windows (0 %).
        self._cpu_prev = self._safe("cpu", lambda: self._ps.cpu_times(percpu=True))
        self._primed_at: float | None = time.monotonic()

    def _safe(self, key: str, fn, default=None):
        try:
            return fn()
        except Exception as exc:  # psutil raises OSError, AccessDenied, NotImplementedError...
            self._warn(key, "host telemetry: cannot read %s (%s); reporting without it", key, exc)
            return default

    def sample(self) -> HostSample:
        ps = self._ps
        if self._primed_at is not None:
            # A first sample right after priming would measure nothing (psutil reads 0 %).
            time.sleep(max(0.0, _MIN_CPU_WINDOW_S - (time.monotonic() - self._primed_at)))
            self._primed_at = None
        cpu_count = self._safe("cpu_count", lambda: ps.cpu_count(logical=True), 0) or 0
        per_core = self._cpu_per_core()
        load = self._safe("load", ps.getloadavg)
        vm = self._safe("memory", ps.virtual_memory)
        swap = self._safe("swap", ps.swap_memory)
        return HostSample(
            cpu_count=cpu_count or len(per_core),
            cpu_percent=round(sum(per_core) / len(per_core), 2) if per_core else None,
            cpu_per_core_percent=per_core,
            load_1m=load[0] if load else None,
            load_5m=load[1] if load else None,
            load_15m=load[2] if load else None,
            memory_total_bytes=vm.total if vm else None,
            memory_used_bytes=(vm.total - vm.available) if vm else None,
            memory_available_bytes=vm.available if vm else None,
            memory_percent=float(vm.percent) if vm else None,
            swap_total_bytes=swap.total if swap else None,
            swap_used_bytes=swap.used if swap else None,
            disks=self._disks(),
            net=self._net(),
        )

    def _cpu_per_core(self) -> tuple[float, ...]:
        now = self._safe("cpu", lambda: self._ps.cpu_times(percpu=True))
        prev, self._cpu_prev = self._cpu_prev, now
        if not now or not prev or len(now) != len(prev):
            return ()
        return tuple(_busy_percent(a, b) for a, b in zip(prev, now))

    def _disks(self) -> tuple[DiskUsage, ...]:
        out = []
        for name, path in self._disk_paths.items():
            du = self._safe(f"disk:{name}", lambda p=path: self._ps.disk_usage(str(p)))
            if du is not None:
                out.append(DiskUsage(name, str(path), du.total, du.used, du.free, float(du.percent)))
        return tuple(out)

    def _net(self) -> NetCounters | None:
        nics = self._safe("network", lambda: self._ps.net_io_counters(pernic=True))
        if nics is None:
            return None
        totals = [0, 0, 0, 0]
        for nic, c in nics.items():
            if nic.startswith(_SKIP_NIC_PREFIXES):
                continue
            totals[0] += c.bytes_sent
            totals[1] += c.bytes_recv
            totals[2] += c.packets_sent
            totals[3] += c.packets_recv
        return NetCounters(*totals)
