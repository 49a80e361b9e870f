"""LiveNodeView over a real TelemetryService (replayed sources) and monitor_part served
in this test's event loop, the way the daemon runs it."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest

from hivemind_worker.agent.history import history_feed
from hivemind_worker.config import Settings
from hivemind_worker.errors import ConfigError
from hivemind_worker.monitor.live_view import LiveNodeView, monitor_part
from hivemind_worker.monitor.view import NodeView
from hivemind_worker.tasks.model import LogRecord, LogStream, TaskEvent, TaskStatus
from hivemind_worker.telemetry.collector import TelemetryCollector
from hivemind_worker.telemetry.containers import ContainerCounters
from hivemind_worker.telemetry.replay import ReplayNvml, ReplayPsutil
from hivemind_worker.telemetry.service import TelemetryService
from tests.conftest import free_port

FIXTURES = Path(__file__).resolve().parents[2] / "unit" / "telemetry" / "fixtures"
CID = "d" * 64


def make_view(tmp_path, settings):
    rec = json.loads((FIXTURES / "gpus1.json").read_text())
    collector = TelemetryCollector(Path("/var/lib/hivemind-worker"), Path("/var/lib/docker"),
                                   psutil_module=ReplayPsutil(rec["psutil"]), nvml=ReplayNvml(rec["nvml"]),
                                   container_stats=lambda cid: ContainerCounters(10**9, 64 * 2**20, 2**30, 0, 0))
    telemetry = TelemetryService(settings, lambda: {"t-run": CID}, collector=collector)
    snapshot = [
        {"task_id": "t-run", "status": "running", "image": "img", "started_ms": 1, "exit_code": None,
         "resources": {"cpu_millicores": 500, "memory_bytes": 2**30, "gpu_count": 0}},
        {"task_id": "t-old", "status": "done", "image": "img", "started_ms": 1, "exit_code": 0, "resources": {}},
    ]
    logs = [LogRecord(1, LogStream.STDOUT, "hello", 5), LogRecord(2, LogStream.STDERR, "oops", 6)]
    view = LiveNodeView(
        telemetry,
        status=lambda: {"node_id": "n1", "enrolled": True, "version": "0.1.0", "master": "m:1", "started_ms": 1,
                        "draining": False, "session": {"state": "backoff", "connected": False, "since_ms": None,
                                                       "reconnects": 3, "last_error": "refused"},
                        "vpn": {"interface": "wg0", "up": False, "address": "", "latest_handshake_ms": None},
                        "docker": {"available": True, "version": "20.10", "error": ""}},
        counters=lambda: {"reconnects_total": 3, "log_lines_sent_total": 2, "log_bytes_sent_total": 10,
                          "results_spooled": 1},
        task_snapshot=lambda: snapshot,
        log_tail=lambda task_id, n: logs[-n:] if task_id == "t-run" else [],
    )
    return view, telemetry


async def test_live_view_served_in_the_loop(tmp_path):
    settings = Settings(state_dir=tmp_path, monitor_port=free_port())
    view, telemetry = make_view(tmp_path, settings)
    assert isinstance(view, NodeView)
    await telemetry.sample()
    on_event = history_feed(telemetry)
    on_event(TaskEvent("t-old", TaskStatus.RUNNING, time_ms=1_000))
    on_event(TaskEvent("t-old", TaskStatus.EXITED, exit_code=0, time_ms=3_000))
    run = monitor_part(settings, view)
    should_exit = asyncio.Event()
    server = asyncio.create_task(run(should_exit))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.monitor_port}", timeout=5) as c:
            for _ in range(50):
                try:
                    if (await c.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
            status = (await c.get("/api/status")).json()
            assert status["gpus"][0]["name"] == "NVIDIA A100-SXM4-40GB"
            assert status["session"]["state"] == "backoff" and status["tasks_by_state"] == {"running": 1}
            tasks = (await c.get("/api/tasks")).json()
            assert [t["task_id"] for t in tasks] == ["t-run"] and tasks[0]["memory_bytes"] == 64 * 2**20
            logs = (await c.get("/api/tasks/t-run/logs", params={"n": 1})).json()
            assert logs == [{"seq": 2, "stream": "stderr", "text": "oops", "time_ms": 6}]
            history = (await c.get("/api/history")).json()
            assert history[0]["task_id"] == "t-old" and history[0]["duration_s"] == 2.0
            metrics = (await c.get("/metrics")).text
            assert 'hivemind_agent_session_state{state="backoff"} 1.0' in metrics
            assert "hivemind_agent_telemetry_reports_total 1.0" in metrics
            assert 'hivemind_task_memory_bytes{task_id="t-run"}' in metrics
    finally:
        should_exit.set()
        await asyncio.wait_for(server, 5)
    telemetry.close()


def test_monitor_part_disabled_or_port_taken(tmp_path):
    settings = Settings(state_dir=tmp_path, monitor_enabled=False)
    assert monitor_part(settings, object()) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(ConfigError, match="monitor_port"):
            monitor_part(Settings(state_dir=tmp_path, monitor_port=s.getsockname()[1]), object())
