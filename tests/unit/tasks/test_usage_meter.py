"""The usage meter on fake trees: a container's cgroup (v2 by its pid, v1 by its id),
GPUs through the replayed NVML (runtime/gpu.py's reader; energy where the device has
it), RAPL package counters with a wrap-around; absent or unreadable sources give
fewer figures and one warning, and a resumed meter carries the journaled figures on."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.runtime import power
from hivemind_worker.runtime.spec import ContainerInfo
from hivemind_worker.telemetry.replay import ReplayNvml
from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.model import TaskRequest, TaskStatus
from hivemind_worker.tasks.usage import Meter, MeterSources, MeteredUsage, keep_measuring, settle
from tests.support.wait import until

FIXTURES = Path(__file__).resolve().parents[1] / "telemetry" / "fixtures"
CID = "ab" * 32
MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def v2_tree(tmp: Path, pid: int = 4242, rel: str = f"system.slice/docker-{CID}.scope") -> Path:
    """A cgroup v2 root with the container under the systemd driver's name (or
    ``rel``), found through /proc/<pid>/cgroup."""
    root, d = tmp / "cg", tmp / "cg" / rel
    d.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory io\n")
    (tmp / "proc" / str(pid)).mkdir(parents=True)
    (tmp / "proc" / str(pid) / "cgroup").write_text(f"0::/{rel}\n")
    return d


def test_found_by_pid_under_any_parent_never_another_cgroup(tmp_path: Path, caplog) -> None:
    d = v2_tree(tmp_path, rel=f"tasks.slice/private-engine/{CID}")  # a private engine's --cgroup-parent
    put(d, 7_000_000, 5 * MiB)
    m = Meter("t1", None, sources=MeterSources(tmp_path / "cg", tmp_path / "proc", tmp_path / "nopowercap"),
              clock=Clock())
    assert m.locate(4242, CID) and m.sample()
    assert m.usage is not None and m.usage.cpu_seconds == 7.0
    # a pid seen from another pid namespace names some other process: not taken
    other = tmp_path / "proc" / "99"
    other.mkdir()
    (other / "cgroup").write_text("0::/user.slice/someone\n")
    (tmp_path / "cg" / "user.slice" / "someone").mkdir(parents=True)
    caplog.set_level(logging.WARNING)
    assert not Meter("t2", None, sources=MeterSources(tmp_path / "cg", tmp_path / "proc")).locate(99, CID)
    assert any("cannot read the container's cgroup" in r.getMessage() for r in caplog.records)


def put(d: Path, cpu_usec: int, current: int, peak: int | None = None) -> None:
    (d / "cpu.stat").write_text(f"usage_usec {cpu_usec}\nuser_usec 1\nsystem_usec 2\n")
    (d / "memory.current").write_text(f"{current}\n")
    if peak is not None:
        (d / "memory.peak").write_text(f"{peak}\n")


def test_v2_by_pid_time_weighted_average_and_last_sample_kept(tmp_path: Path) -> None:
    d, clock = v2_tree(tmp_path), Clock()
    m = Meter("t1", None, sources=MeterSources(tmp_path / "cg", tmp_path / "proc", tmp_path / "nopowercap"),
              clock=clock)
    assert m.locate(4242, CID)
    put(d, 500_000, 100 * MiB, 150 * MiB)
    clock.t += 1.0
    assert m.sample()
    put(d, 1_500_000, 300 * MiB, 320 * MiB)
    clock.t += 3.0
    assert m.sample()
    got = m.usage
    assert got is not None
    assert (got.cpu_seconds, got.memory_peak_bytes, got.samples) == (1.5, 320 * MiB, 2)
    assert got.memory_avg_bytes == (100 * MiB * 1 + 300 * MiB * 3) // 4  # weighted by time
    assert got.cpu_energy_j is None and got.gpus == ()  # no RAPL, no GPUs: left out
    for f in d.iterdir():
        f.unlink()
    d.rmdir()  # the container exited: its cgroup went with it
    clock.t += 1.0
    assert not m.sample()
    assert m.usage is not None and (m.usage.cpu_seconds, m.usage.samples) == (1.5, 2)


def test_v1_found_by_container_id_peak_from_the_kernel(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cpu, mem = root / "cpu,cpuacct" / "docker" / CID, root / "memory" / "docker" / CID
    cpu.mkdir(parents=True)
    mem.mkdir(parents=True)
    (cpu / "cpuacct.usage").write_text("2500000000\n")
    (mem / "memory.usage_in_bytes").write_text(f"{10 * MiB}\n")
    (mem / "memory.max_usage_in_bytes").write_text(f"{250 * MiB}\n")
    m = Meter("t1", None, sources=MeterSources(root, tmp_path / "proc", tmp_path / "nopowercap"), clock=Clock())
    assert m.locate(0, CID)  # no pid: the usual names
    assert m.sample()
    assert m.usage is not None
    assert (m.usage.cpu_seconds, m.usage.memory_peak_bytes, m.usage.memory_avg_bytes) == (2.5, 250 * MiB, 10 * MiB)


def test_unreadable_cgroup_gives_one_warning_and_no_figures(tmp_path: Path, caplog) -> None:
    d = v2_tree(tmp_path)
    (d / "cpu.stat").mkdir()  # read_text() fails with an OSError, as an unreadable file would
    m = Meter("t1", None, sources=MeterSources(tmp_path / "cg", tmp_path / "proc", tmp_path / "nopowercap"),
              clock=Clock())
    caplog.set_level(logging.WARNING)
    assert m.locate(4242, CID)
    assert not m.sample() and not m.sample()
    assert m.usage is None
    assert len([r for r in caplog.records if "usage meter cannot read" in r.getMessage()]) == 1


class EnergyNvml(ReplayNvml):
    """The replayed NVML, plus total energy: successive readings per device index;
    a device without readings answers NVML_ERROR_NOT_SUPPORTED, as older boards do."""

    def __init__(self, data: dict, energy: dict[int, list[int]]) -> None:
        super().__init__(data)
        self.energy = energy

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if h not in self.energy:
            self._raise("NVML_ERROR_NOT_SUPPORTED")
        reads = self.energy[h]
        return reads.pop(0) if len(reads) > 1 else reads[0]


def gpus4() -> dict:
    return json.loads((FIXTURES / "gpus4.json").read_text())["nvml"]


def test_gpu_seconds_and_exact_energy_delta_absent_where_not_supported(tmp_path: Path) -> None:
    d, clock = v2_tree(tmp_path), Clock()
    put(d, 1, 1)
    data = gpus4()
    busy, idle_no_power = data["devices"][0]["uuid"], data["devices"][3]["uuid"]
    nvml = EnergyNvml(data, {0: [1_000, 1_500, 4_000]})  # mJ
    m = Meter("t1", None, gpu_ids=(busy, "3"), clock=clock,
              sources=MeterSources(tmp_path / "cg", tmp_path / "proc", tmp_path / "nopowercap", nvml=nvml))
    assert m.locate(4242, CID)
    for _ in range(3):
        clock.t += 2.0
        assert m.sample()
    m.close()
    assert nvml.shutdown_calls == 1
    assert m.usage is not None
    first, other = m.usage.gpus
    assert (first.index, first.uuid, first.energy_j, first.gpu_seconds) == (0, busy, 3.0, 6.0)  # 100 % for 6 s
    assert (other.index, other.uuid, other.energy_j, other.gpu_seconds) == (3, idle_no_power, None, 0.0)
    assert "energy_j" not in other.to_json()


def test_no_nvml_leaves_the_gpus_out_with_one_warning(tmp_path: Path, caplog) -> None:
    d = v2_tree(tmp_path)
    put(d, 1, 1)
    nvml = ReplayNvml(json.loads((FIXTURES / "nvml_failing.json").read_text())["nvml"])
    m = Meter("t1", None, gpu_ids=("GPU-x",), clock=Clock(),
              sources=MeterSources(tmp_path / "cg", tmp_path / "proc", tmp_path / "nopowercap", nvml=nvml))
    caplog.set_level(logging.WARNING)
    assert m.locate(4242, CID) and m.sample() and m.sample()
    assert m.usage is not None and m.usage.gpus == ()
    assert len([r for r in caplog.records if "GPUs through NVML" in r.getMessage()]) == 1


def rapl_tree(root: Path, domains: dict[str, tuple[str, int, int]]) -> None:
    for domain, (name, energy, top) in domains.items():
        (root / domain).mkdir(parents=True, exist_ok=True)
        (root / domain / "name").write_text(name + "\n")
        (root / domain / "energy_uj").write_text(f"{energy}\n")
        (root / domain / "max_energy_range_uj").write_text(f"{top}\n")


TOP = 262_143_328_850


def test_rapl_packages_only_with_a_wrap_around(tmp_path: Path) -> None:
    d, clock, cap = v2_tree(tmp_path), Clock(), tmp_path / "powercap"
    put(d, 1, 1)
    rapl_tree(cap, {"intel-rapl:0": ("package-0", TOP - 2_000_000, TOP), "intel-rapl:1": ("package-1", 5_000_000, TOP),
                    "intel-rapl:0:0": ("core", 1, TOP), "intel-rapl:2": ("psys", 1, TOP)})
    m = Meter("t1", None, clock=clock, sources=MeterSources(tmp_path / "cg", tmp_path / "proc", cap))
    assert m.locate(4242, CID) and m.sample()
    assert m.usage is not None and m.usage.cpu_energy_j == 0.0
    # package-0 wraps (2 J to the top, 3 J after); package-1 +4 J; core and psys are not counted
    rapl_tree(cap, {"intel-rapl:0": ("package-0", 3_000_000, TOP), "intel-rapl:1": ("package-1", 9_000_000, TOP),
                    "intel-rapl:0:0": ("core", 900_000_000, TOP), "intel-rapl:2": ("psys", 900_000_000, TOP)})
    clock.t += 1
    assert m.sample()
    assert m.usage.cpu_energy_j == pytest.approx(9.0)
    assert power.delta_uj(TOP - 1, 1, TOP) == 2


def test_rapl_unreadable_is_left_out(tmp_path: Path) -> None:
    d, cap = v2_tree(tmp_path), tmp_path / "powercap"
    put(d, 1, 1)
    (cap / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # not readable as a file
    (cap / "intel-rapl:0" / "name").write_text("package-0\n")
    (cap / "intel-rapl:0" / "max_energy_range_uj").write_text(f"{TOP}\n")
    m = Meter("t1", None, clock=Clock(), sources=MeterSources(tmp_path / "cg", tmp_path / "proc", cap))
    assert m.locate(4242, CID) and m.sample() and m.sample()
    assert m.usage is not None and m.usage.cpu_energy_j is None
    assert "cpu_energy_j" not in m.usage.to_json()


def test_a_resumed_meter_carries_the_journaled_figures_on(tmp_path: Path) -> None:
    """An agent restarted mid-task: the average keeps its weight, energy counted over
    the gap from the journaled counters, GPU-seconds added to."""
    d, clock, cap = v2_tree(tmp_path), Clock(), tmp_path / "powercap"
    data = gpus4()
    busy = data["devices"][0]["uuid"]
    rapl_tree(cap, {"intel-rapl:0": ("package-0", 1_000_000, TOP)})
    src = MeterSources(tmp_path / "cg", tmp_path / "proc", cap, nvml=EnergyNvml(data, {0: [10_000]}))
    first = Meter("t1", None, gpu_ids=(busy,), clock=clock, sources=src)
    put(d, 1_000_000, 100 * MiB)
    clock.t += 4.0
    assert first.locate(4242, CID) and first.sample()
    before = MeteredUsage.from_json(json.loads(json.dumps(first.usage.to_json())))  # as the journal keeps it
    # the agent is gone for a while; the task goes on
    rapl_tree(cap, {"intel-rapl:0": ("package-0", 6_000_000, TOP)})
    put(d, 3_000_000, 200 * MiB, 400 * MiB)
    src2 = MeterSources(tmp_path / "cg", tmp_path / "proc", cap, nvml=EnergyNvml(data, {0: [12_500]}))
    again = Meter("t1", before, gpu_ids=(busy,), clock=clock, sources=src2)
    clock.t += 4.0
    assert again.locate(4242, CID) and again.sample()
    got = again.usage
    assert got is not None
    assert (got.cpu_seconds, got.memory_peak_bytes, got.samples) == (3.0, 400 * MiB, 2)
    assert got.memory_avg_bytes == 150 * MiB  # 4 s at 100 MiB, 4 s at 200 MiB
    assert got.cpu_energy_j == pytest.approx(5.0)
    assert got.gpus[0].energy_j == pytest.approx(2.5)
    assert got.gpus[0].gpu_seconds == pytest.approx(8.0)


class OneContainer:
    """The one runtime call the meter makes (inspect): the engine away at first."""

    def __init__(self, info: ContainerInfo) -> None:
        self.info, self.calls = info, 0

    async def inspect(self, cid: str) -> ContainerInfo | None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeUnavailable("Docker engine is restarting; wait for it")
        return self.info


class Run:
    """What the meter touches of a TaskRun."""

    def __init__(self, row: TaskRow, runtime: OneContainer, journal: Journal) -> None:
        self.row, self.task_id, self._extra = row, row.task_id, {"task_id": row.task_id}
        self.ctx = SimpleNamespace(runtime=runtime, journal=journal)


async def test_measured_until_the_cgroup_goes_image_id_after_the_engine_returns(tmp_path: Path) -> None:
    d = v2_tree(tmp_path)
    put(d, 2_000_000, 50 * MiB)
    journal = Journal(tmp_path / "j.db", time.time)
    await journal.open()
    row = await journal.put(TaskRow("t1", TaskRequest("t1"), TaskStatus.RUNNING, container_id=CID))
    rt = OneContainer(ContainerInfo(CID, "t1", True, None, False, pid=4242, image_id="sha256:" + "e" * 64,
                                    started_at_ms=1))
    run = Run(row, rt, journal)
    meter = Meter("t1", None, sources=MeterSources(tmp_path / "cg", tmp_path / "proc", tmp_path / "nopowercap"))
    stop = asyncio.Event()
    sampler = asyncio.create_task(keep_measuring(run, None, meter, stop))
    await until(lambda: run.row.image_digest and run.row.usage and run.row.usage.samples >= 2, timeout=10)
    assert rt.calls == 2  # asked again after the engine came back, then never again
    shutil.rmtree(d)  # the container exits: its cgroup goes
    await asyncio.wait_for(sampler, 10)  # ends by itself
    await settle(run, (sampler, meter, stop))  # still RUNNING (as when the agent closes): journaled
    got = await journal.get("t1")
    assert got is not None and got.usage == run.row.usage and got.image_digest == "sha256:" + "e" * 64
    assert got.usage.cpu_seconds == 2.0
    await journal.close()
