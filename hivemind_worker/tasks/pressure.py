"""Host pressure: is the host busy with load that is not the node's own?

Pressure is what other users of the machine do: the CPU and memory the node's own
task containers use are subtracted from the host's figures first (``foreign_load``;
BOINC's "non-BOINC CPU usage"), so a node whose own tasks saturate the CPU is busy,
not under pressure. Then the thresholds apply.
``PressureGauge`` keeps the current verdict from samples (CPU %, memory %), with a
little hysteresis so a host hovering at the threshold does not flap. While under
pressure the manager admits nothing and lowers the CPU weight (Docker cpu_shares) of
running tasks whose priority is below the highest running priority; ``plan_shares``
says which weight each task should have. The sampler is injectable (tests); the
default reads psutil and is called from a thread, never on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

NORMAL_SHARES = 1024  # Docker's default weight
LOW_SHARES = 128  # an eighth of the CPU weight of a normal task when the host is busy
HYSTERESIS_PERCENT = 5.0

Sampler = Callable[[], tuple[float, float]]  # -> (cpu percent, memory percent)


def psutil_sampler() -> tuple[float, float]:
    """Host-wide CPU % since the previous call and memory % in use (blocking, cheap)."""
    import psutil

    return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


@dataclass(frozen=True)
class HostSize:
    cores: int
    memory_bytes: int


def host_size() -> HostSize:
    """The machine's logical cores and memory (blocking, cheap)."""
    import psutil

    return HostSize(psutil.cpu_count() or 1, psutil.virtual_memory().total)


def foreign_load(
    cpu_percent: float, memory_percent: float, own: Sequence[tuple[float, int]], size: HostSize
) -> tuple[float, float]:
    """Host CPU % and memory % less what the node's own containers use. ``own`` holds
    (CPU as % of one core, memory bytes) per container; never below zero (the
    samples are taken at slightly different moments)."""
    own_cpu = sum(c for c, _ in own) / max(size.cores, 1)
    own_memory = sum(m for _, m in own) * 100.0 / max(size.memory_bytes, 1)
    return max(0.0, cpu_percent - own_cpu), max(0.0, memory_percent - own_memory)


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
