"""The telemetry subsystem as the agent uses it: one ``sample()`` per report interval
(collect in a thread, price the report, record it, keep the history) and the
read-side the monitor's NodeView delegates to.

``sample()`` has the ``AgentParts.sample`` signature and returns the flat mapping
``control.messages.report_from_sample`` reads. Task history follows what the agent
tells it (``task_started`` / ``task_ended``, in plain values: agent/history.py
translates task events). Telemetry knows nothing of tasks/ and steers nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from hivemind_worker.config import Settings
from hivemind_worker.telemetry.collector import DEFAULT_DOCKER_ROOT, TelemetryCollector
from hivemind_worker.telemetry.history import SampleHistory
from hivemind_worker.telemetry.rewards import DB_FILE, RewardLedger, reward_for
from hivemind_worker.telemetry.sample import TelemetrySample

def flat_report(sample: TelemetrySample, reward: int, earnings: Mapping[str, Any]) -> dict[str, Any]:
    """The flat mapping of control.messages.report_from_sample (unknown figures as 0)."""
    h = sample.host
    workspace = next((d for d in h.disks if d.name == "workspace"), None)
    z = lambda v: v if v is not None else 0  # noqa: E731
    return {
        "time_ms": sample.time_ms,
        "cpu_percent": z(h.cpu_percent),
        "memory_percent": z(h.memory_percent),
        "memory_used_bytes": z(h.memory_used_bytes),
        "memory_total_bytes": z(h.memory_total_bytes),
        "gpu_percent": sample.gpu_percent,
        "load1": z(h.load_1m),
        "disk_free_bytes": workspace.free_bytes if workspace else 0,
        "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name,
                  "utilization_percent": z(g.utilization_percent), "memory_used_bytes": z(g.memory_used_bytes),
                  "memory_total_bytes": z(g.memory_total_bytes), "temperature_c": z(g.temperature_c),
                  "power_w": z(g.power_w)} for g in sample.gpus],
        "tasks": [{"task_id": t.task_id, "cpu_percent": z(t.cpu_percent), "memory_bytes": z(t.memory_bytes),
                   "read_bytes": z(t.io_read_bytes), "write_bytes": z(t.io_write_bytes)} for t in sample.tasks],
        "reward": {"report": reward, "today": int(earnings.get("today", 0)), "total": int(earnings.get("total", 0))},
    }


class TelemetryService:
    def __init__(
        self,
        settings: Settings,
        running_tasks: Callable[[], Mapping[str, str]] = dict,
        *,
        docker_root: Path | None = DEFAULT_DOCKER_ROOT,
        collector: TelemetryCollector | None = None,
        ledger: RewardLedger | None = None,
        history: SampleHistory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``running_tasks()`` -> {task id: full container id} of the running tasks."""
        self.collector = collector or TelemetryCollector(settings.state_dir, docker_root)
        self.ledger = ledger or RewardLedger(settings.state_dir / DB_FILE)
        self.history = history or SampleHistory(settings.report_interval_s)
        self._running_tasks = running_tasks
        self._clock = clock
        self.reports = 0

    async def sample(self) -> dict[str, Any]:
        tasks = dict(self._running_tasks())
        sample = await asyncio.to_thread(self.collector.sample, tasks)
        reward = reward_for(sample)
        await asyncio.to_thread(self.ledger.record_report, sample.time_ms, reward, list(tasks))
        self.history.add(sample, reward)
        self.reports += 1
        return flat_report(sample, reward, self.ledger.earnings(sample.time_ms))

    def task_started(self, task_id: str, time_ms: int) -> None:
        """Keep the task history; cheap (one SQLite upsert), safe on the loop."""
        self.ledger.record_task(task_id, "running", started_ms=time_ms)

    def task_ended(self, task_id: str, state: str, time_ms: int, exit_code: int | None, reason: str) -> None:
        self.ledger.record_task(task_id, state, finished_ms=time_ms, exit_code=exit_code, reason=reason)

    def task_usage(self, task_id: str, record_json: str) -> None:
        """The task's signed usage record, once the master holds its result (for the history)."""
        self.ledger.record_usage(task_id, record_json)

    # ---- what NodeView delegates to
    def telemetry_series(self) -> list[dict[str, Any]]:
        return self.history.series()

    def latest_sample(self) -> dict[str, Any] | None:
        return self.history.latest.to_dict() if self.history.latest else None

    def earnings(self) -> dict[str, Any]:
        return self.ledger.earnings(int(self._clock() * 1000))

    def task_history(self) -> list[dict[str, Any]]:
        return self.ledger.history()

    def close(self) -> None:
        self.collector.close()
        self.ledger.close()
