"""What a task used while it ran, as the node measured it.

``MeteredUsage`` is what the meter leaves on the task's journal row when the task ends
(and after every sample while it runs, so an agent killed mid-task keeps what was
measured); the result step builds the signed usage record (hivemind_worker/usage.py)
from it. A figure the hardware did not report is ``None`` / absent, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuUse:
    """One GPU the task was given: utilization-weighted busy seconds, and NVML's
    energy delta over the run (None where the device does not report energy)."""

    index: int
    uuid: str
    gpu_seconds: float
    energy_j: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "uuid": self.uuid, "gpu_seconds": self.gpu_seconds}
        if self.energy_j is not None:
            out["energy_j"] = self.energy_j
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GpuUse":
        energy = d.get("energy_j")
        return cls(int(d["index"]), str(d["uuid"]), float(d["gpu_seconds"]),
                   float(energy) if energy is not None else None)


@dataclass(frozen=True)
class MeteredUsage:
    """CPU-seconds and memory of the task's container (cgroup), its GPUs (NVML) and the
    host's RAPL package energy over the run (``cpu_energy_j``, None where unreadable).
    ``samples`` is how many cgroup samples the figures rest on (0: none were taken).
    ``counters``: the last raw reading of each cumulative energy counter ("rapl:<domain>"
    in µJ, "nvml:<uuid>" in mJ), so an agent restarted mid-task goes on from there;
    the meter's bookkeeping, not part of the signed record."""

    cpu_seconds: float
    memory_peak_bytes: int
    memory_avg_bytes: int
    gpus: tuple[GpuUse, ...] = ()
    cpu_energy_j: float | None = None
    samples: int = 0
    counters: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cpu_seconds": self.cpu_seconds, "memory_peak_bytes": self.memory_peak_bytes,
            "memory_avg_bytes": self.memory_avg_bytes, "gpus": [g.to_json() for g in self.gpus],
            "samples": self.samples,
        }
        if self.cpu_energy_j is not None:
            out["cpu_energy_j"] = self.cpu_energy_j
        if self.counters:
            out["counters"] = dict(self.counters)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "MeteredUsage":
        energy = d.get("cpu_energy_j")
        return cls(
            cpu_seconds=float(d.get("cpu_seconds", 0.0)),
            memory_peak_bytes=int(d.get("memory_peak_bytes", 0)),
            memory_avg_bytes=int(d.get("memory_avg_bytes", 0)),
            gpus=tuple(GpuUse.from_json(g) for g in d.get("gpus", ())),
            cpu_energy_j=float(energy) if energy is not None else None,
            samples=int(d.get("samples", 0)),
            counters=tuple(sorted((str(k), int(v)) for k, v in (d.get("counters") or {}).items())),
        )
