"""`hivemind-worker status` as a real subprocess, against a live monitor and with none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hivemind_worker.identity import NodeIdentity, save_identity
from hivemind_worker.monitor.server import bind


def status(tmp_path, port: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(tmp_path / "etc"), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
           "HIVEMIND_MONITOR_PORT": str(port)}
    return subprocess.run([sys.executable, "-m", "hivemind_worker", "status", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_from_running_daemon(tmp_path, fake_view, live_monitor):
    fake_view.report()
    fake_view.start_task("task-s")
    r = status(tmp_path, live_monitor.port)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("hivemind-worker 0.1.0 on worker-01")
    assert "Node       node-7f3a9c" in out and "Session    connected for" in out
    assert "VPN        wg0 up, 10.77.0.12/32, last handshake 42 s ago" in out
    assert "GPUs       1: NVIDIA A100-SXM4-40GB" in out and "Tasks      1 running" in out
    assert f"Monitor    http://127.0.0.1:{live_monitor.port}/monitor.html" in out
    r = status(tmp_path, live_monitor.port, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["node_id"] == "node-7f3a9c"


def test_status_when_not_running_shows_what_is_known(tmp_path):
    sock = bind("127.0.0.1", 0)  # a port that is surely closed once we close it
    port = sock.getsockname()[1]
    sock.close()
    r = status(tmp_path, port)
    assert r.returncode == 1
    assert r.stdout.startswith(f"hivemind-worker is not running: nothing answers on http://127.0.0.1:{port}")
    assert "Enrolled   no: this node is not enrolled" in r.stdout and "hivemind-worker enroll" in r.stdout
    (tmp_path / "etc").mkdir()
    save_identity(tmp_path / "etc", NodeIdentity("node-abc123", "secret-credential", "10.0.0.1:7443", True))
    from hivemind_worker.telemetry.rewards import RewardLedger

    ledger = RewardLedger(tmp_path / "state" / "telemetry.sqlite3")
    ledger.record_report(1_700_000_000_000, 12)
    ledger.close()
    r = status(tmp_path, port)
    assert r.returncode == 1
    assert "Enrolled   yes: node node-abc123, master 10.0.0.1:7443" in r.stdout
    assert "Earnings   today 0, total 12" in r.stdout and "secret-credential" not in r.stdout + r.stderr
    r = status(tmp_path, port, "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 1 and data["running"] is False and data["node_id"] == "node-abc123"
