"""``NodeView``: the read-only window the monitor (and /metrics) has on the daemon.

The agent implements it over its live state; tests use a hand-written fake. Every
method is synchronous, called on the event loop, and must be cheap (in-memory
state or one small SQLite query) and return JSON-ready values (str, int, float,
bool, None, list, dict). The shapes below are the contract; keys may be added.

status() -> {
    "node_id": str | None, "enrolled": bool, "version": str, "hostname": str,
    "master": str,                           # host:port, "" when not enrolled
    "started_ms": int,                       # when the daemon started
    "draining": bool,
    "session": {"state": str,                # one of SESSION_STATES (control.session.SessionState)
                "connected": bool, "since_ms": int | None, "reconnects": int,
                "last_error": str},
    "vpn": {"interface": str, "up": bool, "address": str,
            "latest_handshake_ms": int | None},
    "docker": {"available": bool, "version": str, "error": str},
    "gpus": [{"index": int, "name": str, "uuid": str}],
    "capacity": {"cpus": float, "memory_bytes": int, "gpus": int},   # optional
}
tasks() -> [                                 # tasks the node holds now (not yet delivered)
    {"task_id": str, "status": str,          # TaskStatus value
     "image": str, "started_ms": int | None, "exit_code": int | None,
     "cpu_percent": float | None, "memory_bytes": int | None,
     "resources": {"cpu_millicores": int, "memory_bytes": int, "gpu_count": int}}
]
task_logs(task_id, n) -> last n lines: [{"seq": int, "stream": str, "text": str, "time_ms": int}]
                         ([] for an unknown task)
history() -> finished tasks, newest first: RewardLedger.history() rows
    [{"task_id", "state", "image", "started_ms", "finished_ms", "duration_s", "exit_code", "reason", "reward",
      "usage": the signed usage record's fields (hivemind_worker/usage.py) | None, "usage_signed": bool}]
telemetry_series() -> SampleHistory.series() points, oldest first:
    [{"time_ms", "cpu_percent", "memory_percent", "load_1m",
      "gpus": [{"index", "utilization_percent", "memory_percent"}], "tasks_running", "reward"}]
latest_sample() -> TelemetrySample.to_dict() of the last sample, or None before the first
earnings() -> RewardLedger.earnings(now_ms)
agent_counters() -> {"reconnects_total": int, "log_lines_sent_total": int, "log_bytes_sent_total": int,
                     "results_spooled": int, "telemetry_reports_total": int}
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

# The control session's states (control.session.SessionState values), listed here so the
# monitor does not import the control layer.
SESSION_STATES = ("connecting", "connected", "backoff", "revoked", "closed")


@runtime_checkable
class NodeView(Protocol):
    def status(self) -> dict[str, Any]: ...

    def tasks(self) -> list[dict[str, Any]]: ...

    def task_logs(self, task_id: str, n: int) -> list[dict[str, Any]]: ...

    def history(self) -> list[dict[str, Any]]: ...

    def telemetry_series(self) -> list[dict[str, Any]]: ...

    def latest_sample(self) -> dict[str, Any] | None: ...

    def earnings(self) -> dict[str, Any]: ...

    def agent_counters(self) -> dict[str, Any]: ...


def tasks_by_state(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many of ``tasks`` (NodeView.tasks() rows) are in each state; /api/status and /metrics."""
    return dict(collections.Counter(str(t.get("status")) for t in tasks))
