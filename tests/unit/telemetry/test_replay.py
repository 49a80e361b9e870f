"""The recorder and the replay agree: what is recorded replays to the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from hivemind_worker.telemetry.host import HostCollector
from hivemind_worker.telemetry.replay import ReplayNvml, ReplayPsutil, main, record_nvml, record_psutil

FIXTURES = Path(__file__).with_name("fixtures")


def test_nvml_recording_round_trips():
    for name in ("gpus1.json", "gpus4.json", "nvml_failing.json"):
        nvml = json.loads((FIXTURES / name).read_text())["nvml"]
        again = record_nvml(ReplayNvml(nvml))
        assert again["devices"] == nvml["devices"], name
        assert again["init_error"] == nvml["init_error"]


def test_psutil_recording_of_this_machine_replays(tmp_path):
    rec = record_psutil(psutil, {"workspace": str(tmp_path)}, cpu_reads=2)
    json.dumps(rec)  # JSON-ready
    host = HostCollector(ReplayPsutil(rec), {"workspace": tmp_path}).sample()
    assert host.cpu_count == psutil.cpu_count() and host.memory_total_bytes == psutil.virtual_memory().total
    assert host.disks[0].path == str(tmp_path)


def test_record_command(tmp_path):
    out = tmp_path / "rec.json"
    assert main([str(out), "--disk", f"workspace={tmp_path}"]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"psutil", "nvml"} and data["psutil"]["disk_paths"] == {"workspace": str(tmp_path)}
