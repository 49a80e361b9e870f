"""What a task used while it ran, as the node measured it.

``MeteredUsage`` is what the meter leaves on the task's journal row when the task ends
(and every PERSIST_S while it runs, so an agent killed mid-task keeps what was
measured); the result step builds the signed usage record (hivemind_worker/usage.py)
from it. A figure the hardware did not report is ``None`` / absent, never guessed.

``Meter`` samples a running container: its cgroup files (runtime/cgroup.py: no engine
call per sample), its GPUs through NVML (runtime/gpu.py) and the host's RAPL package
counters (runtime/power.py), first right away, then at RAMP_S, then every SAMPLE_S.
The cgroup vanishes with the container, so the figures are those of the last sample:
the CPU-seconds miss what the task used after it (at most one interval, SAMPLE_S; all
of a task that ended before the first sample), and so may the peak where the kernel
keeps no high-water mark of its own. The average is time-weighted over the samples.
Energy counters are cumulative: their delta spans the whole run, restarts included.
GPU-seconds are NVML's utilization times the interval, summed (NVML gives no counter).
Anything unreadable gives fewer figures and one warning per task, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hivemind_worker.errors import WorkerError
from hivemind_worker.runtime import cgroup, power
from hivemind_worker.runtime.gpu import NvmlGpuMeter
from hivemind_worker.runtime.spec import ContainerInfo
from hivemind_worker.tasks.model import TaskStatus

logger = logging.getLogger(__name__)

RAMP_S = (0.1, 0.2, 0.4)  # the first gaps: a short task gets some samples too
SAMPLE_S = 1.0
PERSIST_S = 5.0  # the journal gets the figures this often while the task runs
_WEIGHT = "meter:weight_ms"  # the time the average spans, kept with the counters


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


@dataclass(frozen=True)
class MeterSources:
    """Where the meter reads; tests point these at fakes."""

    cgroup_root: Path = cgroup.ROOT
    proc: Path = cgroup.PROC
    powercap: Path = power.POWERCAP
    nvml: object | None = None  # None: pynvml, loaded only for a task that holds GPUs


class Meter:
    """One task's running figures. ``sample()`` blocks (file reads, NVML): run it in a
    worker thread, one call at a time; ``usage`` is replaced whole, so the event loop
    may read it at any moment."""

    def __init__(self, task_id: str, previous: MeteredUsage | None, gpu_ids: tuple[str, ...] = (),
                 sources: MeterSources | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.task_id = task_id
        self.usage = previous
        self._gpu_ids = gpu_ids
        self._src = sources or MeterSources()
        self._clock = clock
        self._last = clock()
        self._counters = dict(previous.counters) if previous else {}
        self._weight_ms = self._counters.pop(_WEIGHT, 0)
        self._gpus = {g.uuid: g for g in previous.gpus} if previous else {}
        self._rapl = True  # off once a read finds no package domain
        self._nvml = NvmlGpuMeter(self._src.nvml) if gpu_ids else None
        self._dirs: cgroup.CgroupDirs | None = None
        self._warned: set[str] = set()

    def _warn(self, what: str, exc: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning("task %s: usage meter cannot read %s (%s); that figure is left out of its record",
                           self.task_id, what, exc, extra={"task_id": self.task_id})

    def locate(self, pid: int, container_id: str) -> bool:
        """Find the container's cgroup (blocking); False when it is not there."""
        try:
            self._dirs = cgroup.find(pid, container_id, self._src.cgroup_root, self._src.proc)
            if self._dirs is None and pid > 0 and (self._src.proc / str(pid)).exists():
                raise FileNotFoundError(f"none found for pid {pid} under {self._src.cgroup_root}")
        except OSError as exc:
            self._warn("the container's cgroup", exc)
        return self._dirs is not None

    def sample(self) -> bool:
        """One sample (blocking); False once the container's cgroup is gone."""
        now = self._clock()
        dt, self._last = max(0.0, now - self._last), now
        cg = None
        if self._dirs is not None:
            try:
                cg = cgroup.read(self._dirs)
            except (OSError, ValueError) as exc:
                self._warn("the container's cgroup", exc)
            if cg is None:
                return False  # it exited: its last interval is not counted for any figure
        prev = self.usage
        cpu = cg.cpu_usec / 1e6 if cg else (prev.cpu_seconds if prev else 0.0)
        peak, avg, samples = (prev.memory_peak_bytes, prev.memory_avg_bytes, prev.samples) if prev else (0, 0, 0)
        if cg is not None:
            mem = cg.memory_bytes or 0
            peak = max(peak, mem, cg.memory_peak_bytes or 0)
            weight = int(dt * 1000)
            if self._weight_ms + weight > 0:
                avg = (avg * self._weight_ms + mem * weight) // (self._weight_ms + weight)
            else:
                avg = mem
            self._weight_ms += weight
            samples += 1
        gpus = self._sample_gpus(dt)
        rapl = self._sample_rapl(prev.cpu_energy_j if prev else None)
        if cg is None and prev is None:
            return False
        counters = {**self._counters, _WEIGHT: self._weight_ms}
        self.usage = MeteredUsage(round(cpu, 6), peak, avg, gpus, rapl, samples, tuple(sorted(counters.items())))
        return cg is not None

    def _sample_gpus(self, dt: float) -> tuple[GpuUse, ...]:
        if self._nvml is None:
            return tuple(sorted(self._gpus.values(), key=lambda g: g.index))
        try:
            readings = self._nvml.read(self._gpu_ids)
        except Exception as exc:  # NVML missing or broken: the GPUs' figures are left out
            self._warn("the GPUs through NVML", exc)
            return tuple(sorted(self._gpus.values(), key=lambda g: g.index))
        for r in readings:
            old = self._gpus.get(r.uuid) or GpuUse(r.index, r.uuid, 0.0, None)
            busy = old.gpu_seconds + (r.utilization_percent or 0.0) / 100.0 * dt
            energy, key = old.energy_j, f"nvml:{r.uuid}"
            if r.energy_mj is not None:
                last = self._counters.get(key)
                if last is not None and r.energy_mj >= last:  # smaller: the driver reloaded
                    energy = (energy or 0.0) + (r.energy_mj - last) / 1000.0
                elif last is None:
                    energy = energy or 0.0
                self._counters[key] = r.energy_mj
            self._gpus[r.uuid] = GpuUse(r.index, r.uuid, round(busy, 6), energy)
        return tuple(sorted(self._gpus.values(), key=lambda g: g.index))

    def _sample_rapl(self, energy_j: float | None) -> float | None:
        if not self._rapl:
            return energy_j
        found = power.read_packages(self._src.powercap)
        if not found and energy_j is None:
            self._rapl = False  # no RAPL here (or not readable): the figure stays out
            return None
        total = energy_j or 0.0
        for c in found:
            key = f"rapl:{c.domain}"
            if key in self._counters:
                total += power.delta_uj(self._counters[key], c.energy_uj, c.max_range_uj) / 1e6
            self._counters[key] = c.energy_uj
        return total

    @property
    def holds_gpus(self) -> bool:
        return self._nvml is not None

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()


async def keep_measuring(run: Any, container: ContainerInfo | None, meter: Meter, stop: asyncio.Event) -> None:
    """Sample ``run``'s container until its cgroup is gone or ``stop`` is set; the
    figures go on ``run.row`` at once and to the journal every PERSIST_S."""
    rt, cid = run.ctx.runtime, run.row.container_id
    gaps = iter(RAMP_S)
    info, located, persisted = container, False, time.monotonic()
    while not stop.is_set():
        if not located:  # a fresh start looks under the usual names first: no engine call before the first sample
            located = await asyncio.to_thread(meter.locate, info.pid if info is not None else 0, cid)
        alive = located and await asyncio.to_thread(meter.sample)
        if info is None:  # once per task: the image id, and the pid where the usual names missed
            with contextlib.suppress(WorkerError):  # the engine away: ask again at the next gap
                info = await rt.inspect(cid)
            if info is not None and not info.running and not info.started_at_ms:
                info = None  # created, not started yet (a restart between create and start)
        if info is not None and info.image_id and info.image_id != run.row.image_digest:
            run.row = run.row.with_(image_digest=info.image_id)
        if meter.usage is not None and meter.usage != run.row.usage:
            run.row = run.row.with_(usage=meter.usage)
            if time.monotonic() - persisted >= PERSIST_S:
                persisted = time.monotonic()
                await _persist(run)
        if (located and not alive) or (not located and info is not None and not info.running):
            return  # exited (its cgroup went with it), maybe before a sample or while no agent watched
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), next(gaps, SAMPLE_S))


def start(run: Any, container: ContainerInfo | None) -> tuple[asyncio.Task, Meter, asyncio.Event]:
    """Begin measuring a RUNNING task (fresh, or re-attached after a restart: the
    journaled figures are carried on)."""
    meter, stop = Meter(run.task_id, run.row.usage, run.row.gpu_ids), asyncio.Event()
    return asyncio.create_task(keep_measuring(run, container, meter, stop)), meter, stop


async def settle(run: Any, measuring: tuple[asyncio.Task, Meter, asyncio.Event]) -> None:
    """Stop sampling (a sample in flight finishes first); leave the last figures on the
    row and in the journal: the result step builds the record from the row."""
    sampler, meter, stop = measuring
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(sampler), timeout=5.0)
    except Exception as exc:  # a stuck read (NVML hung): the figures so far stand
        logger.warning("task %s: usage meter did not stop cleanly (%r)", run.task_id, exc, extra=run._extra)
        sampler.cancel()
    if meter.holds_gpus:
        await asyncio.to_thread(meter.close)
    if meter.usage is not None:
        run.row = run.row.with_(usage=meter.usage)
    # Ended: the next step's row write (UPLOADING) carries the figures. Still running
    # (the agent closing; a step retried): journal them now for the next agent.
    if run.row.status is TaskStatus.RUNNING and (run.row.usage is not None or run.row.image_digest):
        await _persist(run)


async def _persist(run: Any) -> None:
    try:
        await run.ctx.journal.set_usage(run.task_id, run.row.usage, run.row.image_digest)
    except Exception as exc:  # a full disk: the figures stay on the row in memory
        logger.warning("task %s: usage figures not journaled (%s)", run.task_id, exc, extra=run._extra)
