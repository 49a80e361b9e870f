"""TelemetryService: one report = sample + reward + ledger + history, in the agent's
flat report shape; task events become the task history."""

from __future__ import annotations

import json
from pathlib import Path

from hivemind_worker.agent.history import history_feed
from hivemind_worker.config import Settings
from hivemind_worker.tasks.model import TaskEvent, TaskStatus
from hivemind_worker.telemetry.collector import TelemetryCollector
from hivemind_worker.telemetry.containers import ContainerCounters
from hivemind_worker.telemetry.replay import ReplayNvml, ReplayPsutil
from hivemind_worker.telemetry.rewards import compute_reward
from hivemind_worker.telemetry.service import TelemetryService

FIXTURES = Path(__file__).with_name("fixtures")
CID = "c" * 64


async def test_sample_reports_and_records(tmp_path):
    rec = json.loads((FIXTURES / "gpus4.json").read_text())
    ticks = iter(range(0, 10**6, 30))
    collector = TelemetryCollector(Path("/var/lib/hivemind-worker"), Path("/var/lib/docker"),
                                   psutil_module=ReplayPsutil(rec["psutil"]), nvml=ReplayNvml(rec["nvml"]),
                                   container_stats=lambda cid: ContainerCounters(next(ticks) * 10**9 // 2, 5, 10, 1, 2),
                                   monotonic=lambda: float(next(ticks)))
    settings = Settings(state_dir=tmp_path, report_interval_s=30)
    svc = TelemetryService(settings, lambda: {"t1": CID}, collector=collector)
    first = await svc.sample()
    second = await svc.sample()
    assert len(svc.telemetry_series()) == 2 and svc.latest_sample()["tasks"][0]["task_id"] == "t1"
    host = svc.history.latest.host
    expected = compute_reward(host.cpu_percent, host.memory_percent, 33.75)
    assert second["reward"] == {"report": expected, "today": 2 * expected, "total": 2 * expected}
    assert second["gpu_percent"] == 33.75 and len(second["gpus"]) == 4
    assert second["gpus"][3]["power_w"] == 0  # unknown becomes 0 on the wire
    assert second["tasks"][0]["memory_bytes"] == 5 and second["tasks"][0]["write_bytes"] == 2
    assert first["tasks"][0]["cpu_percent"] == 0  # no previous reading yet
    assert second["disk_free_bytes"] == rec["psutil"]["disk_usage"]["/var/lib/hivemind-worker"]["free"]
    assert svc.earnings()["reports"] == 2

    from hivemind_worker.control.messages import report_from_sample  # the session's consumer accepts it
    report = report_from_sample(second)
    assert report.reward.total == 2 * expected and len(report.gpus) == 4

    on_event = history_feed(svc)  # how the agent wires task events to the history
    on_event(TaskEvent("t1", TaskStatus.RUNNING, time_ms=1_000))
    on_event(TaskEvent("t1", TaskStatus.OOM_KILLED, exit_code=137, reason="memory", time_ms=61_000))
    on_event(TaskEvent("t1", TaskStatus.UPLOADING, time_ms=62_000))
    on_event(TaskEvent("t1", TaskStatus.DONE, time_ms=70_000))
    on_event(TaskEvent("t2", TaskStatus.REJECTED, reason="no GPU free", time_ms=5_000))
    rows = {r["task_id"]: r for r in svc.task_history()}
    assert rows["t1"]["state"] == "oom_killed" and rows["t1"]["exit_code"] == 137 and rows["t1"]["duration_s"] == 60
    assert rows["t1"]["reward"] == 2 * expected
    assert rows["t2"]["exit_code"] is None and rows["t2"]["reason"] == "no GPU free"
    svc.close()
