"""A hand-written NodeView fake built on the real telemetry pieces (replayed collector,
SampleHistory, RewardLedger), and a live monitor server (real uvicorn on a free
loopback port, in a thread with its own event loop, stopped through should_exit)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from hivemind_worker.monitor.app import create_app
from hivemind_worker.monitor.server import bind, serve
from hivemind_worker.telemetry.collector import TelemetryCollector
from hivemind_worker.telemetry.history import SampleHistory
from hivemind_worker.telemetry.replay import ReplayNvml, ReplayPsutil
from hivemind_worker.telemetry.rewards import RewardLedger, reward_for

FIXTURES = Path(__file__).resolve().parents[2] / "unit" / "telemetry" / "fixtures"


class FakeNodeView:
    """What the agent's view returns, driven by the test. Thread-safe enough for a
    server thread reading while the test thread writes (one lock)."""

    def __init__(self, state_dir: Path, fixture: str = "gpus1.json", interval_s: float = 30.0,
                 vary: bool = True) -> None:
        self.vary = vary  # shape the replayed figures so that charts have something to show
        self.reports = 0
        rec = json.loads((FIXTURES / fixture).read_text())
        disks = rec["psutil"]["disk_paths"]
        self.collector = TelemetryCollector(Path(disks["workspace"]), Path(disks["docker"]),
                                            psutil_module=ReplayPsutil(rec["psutil"]), nvml=ReplayNvml(rec["nvml"]),
                                            container_stats=lambda cid: None)
        self.samples = SampleHistory(interval_s)
        self.ledger = RewardLedger(state_dir / "telemetry.sqlite3")
        self.lock = threading.RLock()
        self._tasks: dict[str, dict] = {}
        self._logs: dict[str, list[dict]] = {}
        self.counters = {"reconnects_total": 1, "log_lines_sent_total": 0, "log_bytes_sent_total": 0,
                         "results_spooled": 0, "telemetry_reports_total": 0}
        self.started_ms = int(time.time() * 1000) - 3_600_000
        self.session_state = "connected"

    # --- driving the fake ---
    def report(self, time_ms: int | None = None, wave: float | None = None) -> int:
        """Take a (replayed) sample, varied by ``wave`` in 0..1 so charts have shape."""
        sample = self.collector.sample({t: "0" * 64 for t in self.running()})
        self.reports += 1
        if self.vary:
            w = 0.5 + 0.45 * math.sin(self.reports / 7.0) if wave is None else wave
            host = dataclasses.replace(sample.host, cpu_percent=round(15 + 70 * w, 1),
                                       memory_percent=round(35 + 25 * w, 1))
            gpus = tuple(dataclasses.replace(g, utilization_percent=round(min(100, (g.utilization_percent or 0) * w + 10 * g.index), 1))
                         for g in sample.gpus)
            sample = dataclasses.replace(sample, time_ms=time_ms or sample.time_ms, host=host, gpus=gpus)
        reward = reward_for(sample)
        with self.lock:
            self.samples.add(sample, reward)
            self.ledger.record_report(sample.time_ms, reward, self.running())
            self.counters["telemetry_reports_total"] += 1
        return reward

    def backfill(self, minutes: int = 60, step_s: int = 60) -> None:
        now = int(time.time() * 1000)
        for i in range(minutes * 60 // step_s, 0, -1):
            t = now - i * step_s * 1000
            self.report(t)

    def start_task(self, task_id: str, image: str = "hivemind-task-runtime:local") -> None:
        now = int(time.time() * 1000)
        with self.lock:
            self._tasks[task_id] = {"task_id": task_id, "status": "running", "image": image, "started_ms": now,
                                    "exit_code": None, "cpu_percent": 48.7, "memory_bytes": 187 * 2**20,
                                    "resources": {"cpu_millicores": 1000, "memory_bytes": 512 * 2**20, "gpu_count": 1}}
            self._logs[task_id] = []
            self.ledger.record_task(task_id, "running", image=image, started_ms=now)

    def log(self, task_id: str, text: str, stream: str = "stdout") -> None:
        with self.lock:
            lines = self._logs[task_id]
            lines.append({"seq": len(lines) + 1, "stream": stream, "text": text, "time_ms": int(time.time() * 1000)})
            self.counters["log_lines_sent_total"] += 1
            self.counters["log_bytes_sent_total"] += len(text.encode())

    def finish_task(self, task_id: str, state: str = "done", exit_code: int = 0) -> None:
        with self.lock:
            task = self._tasks.pop(task_id)
            self._logs.pop(task_id, None)
            self.ledger.record_task(task_id, state, finished_ms=int(time.time() * 1000), exit_code=exit_code,
                                    started_ms=task["started_ms"])

    def running(self) -> list[str]:
        with self.lock:
            return [t for t, v in self._tasks.items() if v["status"] == "running"]

    # --- NodeView ---
    def status(self) -> dict:
        sample = self.samples.latest
        return {
            "node_id": "node-7f3a9c", "enrolled": True, "version": "0.1.0", "hostname": "worker-01",
            "master": "10.77.0.1:7443", "started_ms": self.started_ms, "draining": False,
            "session": {"state": self.session_state, "connected": self.session_state == "connected",
                        "since_ms": self.started_ms, "reconnects": self.counters["reconnects_total"], "last_error": ""},
            "vpn": {"interface": "wg0", "up": True, "address": "10.77.0.12/32",
                    "latest_handshake_ms": int(time.time() * 1000) - 42_000},
            "docker": {"available": True, "version": "20.10.24", "error": ""},
            "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid} for g in (sample.gpus if sample else ())],
        }

    def tasks(self) -> list[dict]:
        with self.lock:
            return [dict(t) for t in self._tasks.values()]

    def task_logs(self, task_id: str, n: int) -> list[dict]:
        with self.lock:
            return list(self._logs.get(task_id, [])[-n:])

    def history(self) -> list[dict]:
        return self.ledger.history()

    def telemetry_series(self) -> list[dict]:
        with self.lock:
            return self.samples.series()

    def latest_sample(self) -> dict | None:
        with self.lock:
            return self.samples.latest.to_dict() if self.samples.latest else None

    def earnings(self) -> dict:
        return self.ledger.earnings(int(time.time() * 1000))

    def agent_counters(self) -> dict:
        with self.lock:
            return dict(self.counters)


@pytest.fixture
def fake_view(tmp_path):
    view = FakeNodeView(tmp_path)
    yield view
    view.ledger.close()


class LiveServer:
    def __init__(self, view, push_interval_s: float = 0.3, tls=None, **app_options) -> None:
        self.app = create_app(view, push_interval_s=push_interval_s, **app_options)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.tls = tls
        self.verify = ssl.create_default_context(cafile=str(tls[0])) if tls else True
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.should_exit: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.should_exit = asyncio.Event()
            await serve(self.app, "127.0.0.1", self.port, self.should_exit, sock=self.sock, tls=self.tls)
        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("monitor did not start")

    def stop(self) -> float:
        began = time.monotonic()
        self.loop.call_soon_threadsafe(self.should_exit.set)
        self.thread.join(10)
        assert not self.thread.is_alive(), "monitor did not stop after should_exit"
        self.loop.close()
        if self.error:
            raise self.error
        return time.monotonic() - began


@pytest.fixture
def live_monitor(fake_view):
    server = LiveServer(fake_view).start()
    yield server
    server.stop()


@pytest.fixture
def server_factory():
    """Start a LiveServer for a view; the test stops it (stop() returns how long it took)."""
    started: list[LiveServer] = []

    def make(view) -> LiveServer:
        server = LiveServer(view).start()
        started.append(server)
        return server

    yield make
    for server in started:
        if server.thread.is_alive():
            server.stop()


@pytest.fixture
def view_factory(tmp_path):
    """FakeNodeView over another recorded fixture (e.g. "nvml_failing.json")."""
    made: list[FakeNodeView] = []

    def make(fixture: str = "gpus1.json") -> FakeNodeView:
        view = FakeNodeView(tmp_path / f"v{len(made)}", fixture)
        made.append(view)
        return view

    yield make
    for view in made:
        view.ledger.close()
