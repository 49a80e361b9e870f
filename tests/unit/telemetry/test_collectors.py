"""Collectors on recorded psutil / NVML outputs: 0, 1 and 4 GPUs and a failing NVML."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from hivemind_worker.telemetry.collector import TelemetryCollector
from hivemind_worker.telemetry.gpu import GpuCollector
from hivemind_worker.telemetry.replay import ReplayNvml, ReplayPsutil

FIXTURES = Path(__file__).with_name("fixtures")
GiB = 2**30


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def busy(a: dict, b: dict) -> float:
    """psutil's cpu_percent() formula, written out independently."""
    def tot_busy(t):
        total = sum(t.values()) - t["guest"] - t["guest_nice"]
        return total, total - t["idle"] - t["iowait"]
    (t0, b0), (t1, b1) = tot_busy(a), tot_busy(b)
    return round(max(0.0, min(100.0, (b1 - b0) / (t1 - t0) * 100)), 1)


def test_cpu_figures_are_ours_not_psutils_shared_baseline(tmp_path):
    """psutil.cpu_percent() keeps one baseline per process; another caller (the task
    manager's pressure check) must not shrink our window to nothing."""
    import psutil

    host = TelemetryCollector(tmp_path, None, nvml=ReplayNvml(load("nvml_failing.json")["nvml"])).host
    host.sample()
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # busy here, while someone else keeps resetting psutil
        psutil.cpu_percent(interval=None)
    assert host.sample().cpu_percent > 20


def collector(name: str, **kw) -> tuple[TelemetryCollector, ReplayNvml]:
    rec = load(name)
    nvml = ReplayNvml(rec["nvml"])
    disks = rec["psutil"]["disk_paths"]
    return TelemetryCollector(Path(disks["workspace"]), Path(disks["docker"]), psutil_module=ReplayPsutil(rec["psutil"]),
                              nvml=nvml, container_stats=lambda cid: None, **kw), nvml


@pytest.mark.parametrize("name", ["gpus0.json", "gpus1.json", "gpus4.json", "nvml_failing.json"])
def test_host_figures_from_recording(name):
    rec = load(name)["psutil"]
    c, _ = collector(name)
    s = c.sample()
    h = s.host
    assert h.cpu_count == rec["cpu_count"] == len(h.cpu_per_core_percent)
    # primed with reading 0 at start, so the first sample spans readings 0 -> 1
    assert list(h.cpu_per_core_percent) == [busy(a, b) for a, b in zip(*rec["cpu_times_percpu"][:2])]
    assert h.cpu_percent == pytest.approx(sum(h.cpu_per_core_percent) / rec["cpu_count"], abs=0.01)
    vm = rec["virtual_memory"]
    assert h.memory_total_bytes == vm["total"] and h.memory_available_bytes == vm["available"]
    assert h.memory_used_bytes == vm["total"] - vm["available"] and h.memory_percent == vm["percent"]
    assert (h.load_1m, h.load_5m, h.load_15m) == tuple(rec["getloadavg"])
    assert h.swap_total_bytes == rec["swap_memory"]["total"]
    assert [d.name for d in h.disks] == ["workspace", "docker"]
    assert h.disks[1].path == "/var/lib/docker" and h.disks[1].total_bytes == rec["disk_usage"]["/var/lib/docker"]["total"]
    nics = rec["net_io_counters_pernic"]
    assert h.net.bytes_sent == sum(v["bytes_sent"] for k, v in nics.items() if k != "lo")
    assert s.to_dict()["host"]["cpu_count"] == rec["cpu_count"]


def test_no_gpu():
    c, _ = collector("gpus0.json")
    s = c.sample()
    assert s.gpus == () and s.gpu_percent == 0.0 and s.notes == ()
    assert s.gpu_driver_version == "550.127.05"


def test_one_gpu():
    c, _ = collector("gpus1.json")
    (g,) = c.sample().gpus
    assert g.name == "NVIDIA A100-SXM4-40GB" and g.uuid.startswith("GPU-5f1c2a9e")
    assert g.utilization_percent == 87 and g.memory_utilization_percent == 41
    assert (g.memory_used_bytes, g.memory_total_bytes) == (17 * GiB, 40 * GiB)
    assert g.temperature_c == 63 and g.power_w == pytest.approx(312.417) and g.power_limit_w == 400
    assert [(p.pid, p.used_memory_bytes) for p in g.processes] == [(4242, 16 * GiB)]


def test_four_gpus_one_without_power_warns_once(caplog):
    caplog.set_level(logging.WARNING)
    c, _ = collector("gpus4.json")
    for _ in range(5):
        s = c.sample()
    assert [g.index for g in s.gpus] == [0, 1, 2, 3]
    assert len({g.uuid for g in s.gpus}) == 4
    assert [g.utilization_percent for g in s.gpus] == [100, 0, 35, 0]
    assert s.gpu_percent == pytest.approx(33.75)
    assert s.gpus[3].power_w is None and s.gpus[3].power_limit_w is None and s.gpus[2].power_w == pytest.approx(180.22)
    assert s.gpus[2].processes[0].used_memory_bytes is None  # NVML gives no figure without permission
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("cannot read power " in w for w in warnings) == 1, warnings
    assert sum("power_limit" in w for w in warnings) == 1


def test_failing_nvml_degrades_to_no_gpus_with_one_warning(caplog):
    caplog.set_level(logging.WARNING)
    now = [0.0]
    rec = load("nvml_failing.json")
    nvml = ReplayNvml(rec["nvml"])
    gpu = GpuCollector(nvml, retry_s=300, clock=lambda: now[0])
    for step in range(20):
        now[0] = step * 30.0
        assert gpu.sample() == ()
    warnings = [r for r in caplog.records if r.name.endswith("telemetry.gpu")]
    assert len(warnings) == 1 and "NVML cannot start" in warnings[0].getMessage()
    assert "Library Not Found" in warnings[0].getMessage()
    assert nvml.init_calls == 2  # at start and once after retry_s, not on every sample
    assert "NVML unavailable" in gpu.unavailable_reason


def test_failing_nvml_in_full_sample_is_noted():
    c, _ = collector("nvml_failing.json")
    s = c.sample()
    assert s.gpus == () and s.notes and "NVML unavailable" in s.notes[0]
    assert s.host.cpu_percent is not None  # host figures unaffected


def test_nvml_no_permission_and_lost_device(caplog):
    rec = load("gpus4.json")["nvml"]
    rec["devices"][1]["name"] = {"error": "NVML_ERROR_GPU_IS_LOST"}
    rec["devices"][2]["utilization"] = {"error": "NVML_ERROR_NO_PERMISSION"}
    gpu = GpuCollector(ReplayNvml(rec))
    gpus = gpu.sample()
    assert [g.index for g in gpus] == [0, 2, 3]  # the lost GPU does not hide the others
    assert gpus[1].utilization_percent is None and gpus[1].memory_used_bytes == 3 * GiB


def test_nvml_that_starts_later_is_picked_up():
    rec = load("gpus1.json")["nvml"]
    nvml = ReplayNvml({**rec, "init_error": "NVML_ERROR_DRIVER_NOT_LOADED"})
    now = [0.0]
    gpu = GpuCollector(nvml, retry_s=60, clock=lambda: now[0])
    assert gpu.sample() == ()
    nvml.data = rec  # driver loaded
    now[0] = 30
    assert gpu.sample() == ()
    now[0] = 61
    assert len(gpu.sample()) == 1 and gpu.unavailable_reason is None
    gpu.close()
    assert nvml.shutdown_calls == 1


def test_host_source_failures_degrade(caplog):
    rec = load("gpus0.json")["psutil"]
    rec["swap_memory"] = {"error": "permission denied"}
    del rec["getloadavg"]
    c, _ = collector("gpus0.json")
    c.host._ps = ReplayPsutil(rec)
    c.host._disk_paths["missing"] = Path("/nonexistent")
    for _ in range(3):
        h = c.sample().host
    assert h.swap_total_bytes is None and h.load_1m is None and h.memory_total_bytes is not None
    assert [d.name for d in h.disks] == ["workspace", "docker"]
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 3, msgs  # swap, load, disk:missing - once each


def test_real_psutil_sample_is_cheap(tmp_path):
    c = TelemetryCollector(tmp_path, None, nvml=ReplayNvml(load("nvml_failing.json")["nvml"]))
    s = c.sample()
    assert s.host.cpu_count >= 1 and s.host.memory_total_bytes > 0 and s.host.disks[0].name == "workspace"
