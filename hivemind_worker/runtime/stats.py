"""Docker's one-shot container stats -> ContainerStats.

One-shot stats carry no previous sample, so CPU use is computed against the
previous reading of the same container, kept here. Handles cgroup v1 and v2
field names. Pure: no Docker calls.
"""

from __future__ import annotations

import threading
from typing import Any

from hivemind_worker.runtime.spec import ContainerStats


class StatsReader:
    def __init__(self) -> None:
        self._prev: dict[str, tuple[int, int]] = {}  # container -> (cpu ns, system ns)
        self._lock = threading.Lock()  # readings come from worker threads

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._prev.pop(container_id, None)

    def read(self, container_id: str, raw: dict[str, Any]) -> ContainerStats:
        cpu = raw.get("cpu_stats") or {}
        total = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
        system = int(cpu.get("system_cpu_usage") or 0)
        cores = int(cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1)
        with self._lock:
            prev = self._prev.get(container_id)
            self._prev[container_id] = (total, system)
        if prev is None:  # a two-sample reading, when Docker gives one
            pre = raw.get("precpu_stats") or {}
            prev = (int((pre.get("cpu_usage") or {}).get("total_usage") or 0), int(pre.get("system_cpu_usage") or 0))
        cpu_percent = 0.0
        d_cpu, d_sys = total - prev[0], system - prev[1]
        if prev[1] and d_sys > 0 and d_cpu >= 0:
            # system_cpu_usage counts all cores: scale to "percent of one core".
            cpu_percent = d_cpu / d_sys * cores * 100.0

        mem = raw.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0
        usage = int(mem.get("usage") or 0)
        memory = max(0, usage - int(inactive))

        read = write = 0
        for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
            op = str(entry.get("op", "")).lower()
            if op == "read":
                read += int(entry.get("value") or 0)
            elif op == "write":
                write += int(entry.get("value") or 0)
        return ContainerStats(
            cpu_percent=round(cpu_percent, 2),
            memory_bytes=memory,
            read_bytes=read,
            write_bytes=write,
            memory_limit_bytes=int(mem.get("limit") or 0),
            pids=int((raw.get("pids_stats") or {}).get("current") or 0),
        )
