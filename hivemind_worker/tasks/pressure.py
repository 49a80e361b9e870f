"""Host pressure: is the host's CPU or memory above the configured thresholds?

``PressureGauge`` keeps the current verdict from samples (CPU %, memory %), with a
little hysteresis so a host hovering at the threshold does not flap. While under
pressure the manager admits nothing and lowers the CPU weight (Docker cpu_shares) of
running tasks whose priority is below the highest running priority; ``plan_shares``
says which weight each task should have. The sampler is injectable (tests); the
default reads psutil and is called from a thread, never on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

NORMAL_SHARES = 1024  # Docker's default weight
LOW_SHARES = 128  # an eighth of the CPU weight of a normal task when the host is busy
HYSTERESIS_PERCENT = 5.0

Sampler = Callable[[], tuple[float, float]]  # -> (cpu percent, memory percent)


def psutil_sampler() -> tuple[float, float]:
    """Host-wide CPU % since the previous call and memory % in use (blocking, cheap)."""
    import psutil

    return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


@dataclass
class PressureGauge:
    cpu_threshold: float
    memory_threshold: float
    reason: str = ""  # empty = no pressure
    cpu_percent: float = 0.0
    memory_percent: float = 0.0

    def update(self, cpu: float, memory: float) -> bool:
        """Take a sample; returns True when the verdict changed."""
        self.cpu_percent, self.memory_percent = cpu, memory
        before = bool(self.reason)
        if cpu > self.cpu_threshold:
            self.reason = f"CPU {cpu:.0f}% > {self.cpu_threshold:.0f}%"
        elif memory > self.memory_threshold:
            self.reason = f"memory {memory:.0f}% > {self.memory_threshold:.0f}%"
        elif before and (
            cpu > self.cpu_threshold - HYSTERESIS_PERCENT or memory > self.memory_threshold - HYSTERESIS_PERCENT
        ):
            pass  # still near the threshold: keep the old verdict (and its reason)
        else:
            self.reason = ""
        return before != bool(self.reason)

    @property
    def under_pressure(self) -> bool:
        return bool(self.reason)


def plan_shares(running: Iterable[tuple[str, int]], under_pressure: bool) -> dict[str, int]:
    """CPU weight per running task (task_id, priority): under pressure, tasks below the
    highest running priority get LOW_SHARES; otherwise everyone gets NORMAL_SHARES."""
    tasks = list(running)
    if not under_pressure or not tasks:
        return {tid: NORMAL_SHARES for tid, _ in tasks}
    top = max(p for _, p in tasks)
    return {tid: (NORMAL_SHARES if p >= top else LOW_SHARES) for tid, p in tasks}
