"""In-memory history of telemetry at the report interval, covering at least 24 h.

Only the few numbers the monitor's charts need are kept per point (CPU, memory,
load, per-GPU utilisation and memory), so a day at a 30 s interval costs well under
a megabyte. The full latest sample is kept alongside. Not persisted: after a restart
the charts start again, the earnings (rewards.py) do not.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from hivemind_worker.telemetry.sample import TelemetrySample

DAY_S = 86400


def _pct(part: int | None, whole: int | None) -> float | None:
    if part is None or not whole:
        return None
    return round(part / whole * 100.0, 2)


def point_of(sample: TelemetrySample, reward: int | None = None) -> dict[str, Any]:
    host = sample.host
    return {
        "time_ms": sample.time_ms,
        "cpu_percent": host.cpu_percent,
        "memory_percent": host.memory_percent,
        "load_1m": host.load_1m,
        "gpus": [
            {"index": g.index, "utilization_percent": g.utilization_percent,
             "memory_percent": _pct(g.memory_used_bytes, g.memory_total_bytes)}
            for g in sample.gpus
        ],
        "tasks_running": len(sample.tasks),
        "reward": reward,
    }


class SampleHistory:
    def __init__(self, interval_s: float, span_s: float = DAY_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.capacity = math.ceil(span_s / interval_s) + 1
        self._points: deque[dict[str, Any]] = deque(maxlen=self.capacity)
        self.latest: TelemetrySample | None = None

    def add(self, sample: TelemetrySample, reward: int | None = None) -> dict[str, Any]:
        point = point_of(sample, reward)
        self._points.append(point)
        self.latest = sample
        return point

    def series(self, since_ms: int = 0) -> list[dict[str, Any]]:
        """Points newer than ``since_ms``, oldest first."""
        if since_ms <= 0:
            return list(self._points)
        out = []
        for point in reversed(self._points):
            if point["time_ms"] <= since_ms:
                break
            out.append(point)
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._points)
