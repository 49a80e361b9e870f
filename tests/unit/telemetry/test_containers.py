"""Per-task counters from cgroup files (v1 and v2 trees written by the test), from a
docker-py stats dict, and GPU processes mapped to their container."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.telemetry.containers import (
    CgroupReader,
    ContainerCounters,
    TaskUsageTracker,
    container_of_pid,
    counters_from_docker_stats,
)
from hivemind_worker.telemetry.sample import GpuProcess, GpuSample

CID = "a" * 64
MiB = 2**20


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1(tmp_path):
    write(tmp_path / f"cpu,cpuacct/docker/{CID}/cpuacct.usage", "2500000000\n")
    write(tmp_path / f"memory/docker/{CID}/memory.usage_in_bytes", f"{300 * MiB}\n")
    write(tmp_path / f"memory/docker/{CID}/memory.limit_in_bytes", f"{512 * MiB}\n")
    write(tmp_path / f"memory/docker/{CID}/memory.stat", f"cache 1\ntotal_inactive_file {100 * MiB}\n")
    write(tmp_path / f"blkio/docker/{CID}/blkio.throttle.io_service_bytes",
          "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n")
    c = CgroupReader(tmp_path)(CID)
    assert c == ContainerCounters(2_500_000_000, 200 * MiB, 512 * MiB, 4097, 8192)
    assert CgroupReader(tmp_path)("b" * 64) is None


def test_cgroup_v1_unlimited_memory(tmp_path):
    write(tmp_path / f"cpuacct/system.slice/docker-{CID}.scope/cpuacct.usage", "1\n")
    write(tmp_path / f"memory/system.slice/docker-{CID}.scope/memory.usage_in_bytes", "10\n")
    write(tmp_path / f"memory/system.slice/docker-{CID}.scope/memory.limit_in_bytes", "9223372036854771712\n")
    c = CgroupReader(tmp_path)(CID)
    assert c.memory_limit_bytes is None and c.memory_bytes == 10 and c.io_read_bytes is None


def test_cgroup_v2(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu memory io\n")
    d = tmp_path / f"system.slice/docker-{CID}.scope"
    write(d / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n")
    write(d / "memory.current", f"{64 * MiB}\n")
    write(d / "memory.max", "max\n")
    write(d / "memory.stat", f"anon 1\ninactive_file {4 * MiB}\n")
    write(d / "io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n")
    reader = CgroupReader(tmp_path)
    assert reader.v2
    assert reader(CID) == ContainerCounters(1_500_000_000, 60 * MiB, None, 101, 202)


def test_docker_stats_dict():
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 7_000_000_000}, "online_cpus": 2},
        "memory_stats": {"usage": 50 * MiB, "limit": 256 * MiB, "stats": {"total_inactive_file": 10 * MiB}},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 8, "minor": 0, "op": "Read", "value": 10}, {"major": 8, "minor": 0, "op": "Write", "value": 20},
            {"major": 8, "minor": 0, "op": "Total", "value": 30}]},
    }
    assert counters_from_docker_stats(stats) == ContainerCounters(7_000_000_000, 40 * MiB, 256 * MiB, 10, 20)
    assert counters_from_docker_stats({"cpu_stats": {}}) is None  # a container that is gone


def test_cpu_percent_between_samples_and_gpu_attribution(tmp_path):
    now = [100.0]
    cpu = {"c1": 0}
    other = "b" * 64
    write(tmp_path / "proc/4242/cgroup", f"12:memory:/docker/{CID}\n11:cpuacct:/docker/{CID}\n")
    write(tmp_path / "proc/1/cgroup", "12:memory:/\n")
    assert container_of_pid(4242, tmp_path / "proc") == CID
    assert container_of_pid(1, tmp_path / "proc") is None and container_of_pid(9, tmp_path / "proc") is None

    def stats(cid):
        if cid == other:
            raise FileNotFoundError("gone")
        return ContainerCounters(cpu["c1"], 1, 2, 3, 4)

    gpus = [GpuSample(0, "g", "GPU-0", processes=(GpuProcess(4242, 5 * MiB), GpuProcess(1, 7 * MiB))),
            GpuSample(1, "g", "GPU-1", processes=(GpuProcess(4242, 6 * MiB),))]
    t = TaskUsageTracker(stats, proc_root=tmp_path / "proc", clock=lambda: now[0])
    first = t.usage({"task": CID, "ghost": other}, gpus)
    assert first[0].cpu_percent is None and first[0].memory_bytes == 1
    assert first[1].cpu_percent is None and first[1].memory_bytes is None  # no crash on a vanished container
    now[0] += 10
    cpu["c1"] = 5_000_000_000  # 5 CPU-seconds in 10 s
    (u,) = t.usage({"task": CID}, gpus)
    assert u.cpu_percent == pytest.approx(50.0) and u.cpu_seconds_total == 5.0
    assert u.gpu_memory_bytes == 11 * MiB and u.gpu_uuids == ("GPU-0", "GPU-1")
    assert t.usage({}) == () and t._prev == {}
