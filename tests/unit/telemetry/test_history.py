"""The in-memory history: >= 24 h at the report interval, bounded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hivemind_worker.telemetry.history import SampleHistory
from hivemind_worker.telemetry.replay import ReplayNvml, ReplayPsutil
from hivemind_worker.telemetry.collector import TelemetryCollector

FIXTURES = Path(__file__).with_name("fixtures")


def make_sample(name="gpus4.json"):
    rec = json.loads((FIXTURES / name).read_text())
    c = TelemetryCollector(Path("/var/lib/hivemind-worker"), Path("/var/lib/docker"),
                           psutil_module=ReplayPsutil(rec["psutil"]), nvml=ReplayNvml(rec["nvml"]))
    return c.sample()


def test_covers_a_day_and_stays_bounded():
    import dataclasses

    sample = make_sample()
    h = SampleHistory(interval_s=30)
    assert h.capacity == 2881
    for i in range(4000):
        h.add(dataclasses.replace(sample, time_ms=i * 30_000), reward=i % 16)
    series = h.series()
    assert len(h) == 2881 == len(series)
    assert series[-1]["time_ms"] - series[0]["time_ms"] == 86_400_000
    assert series[-1]["reward"] == 3999 % 16
    assert [p["time_ms"] for p in h.series(since_ms=3997 * 30_000)] == [3998 * 30_000, 3999 * 30_000]
    assert h.latest.time_ms == 3999 * 30_000
    # a day of points at 30 s with 4 GPUs stays small
    size = sum(sys.getsizeof(p) + sum(sys.getsizeof(v) for v in p.values()) for p in series)
    assert size < 4 * 1024 * 1024


def test_point_shape():
    sample = make_sample()
    h = SampleHistory(interval_s=5)
    point = h.add(sample, reward=12)
    assert point["cpu_percent"] == sample.host.cpu_percent
    assert [g["utilization_percent"] for g in point["gpus"]] == [100, 0, 35, 0]
    assert point["gpus"][0]["memory_percent"] == round(22 / 24 * 100, 2)
    assert point["gpus"][3]["memory_percent"] == 0.0
    assert h.capacity == 17281
