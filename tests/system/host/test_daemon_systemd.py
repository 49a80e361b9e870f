"""The real daemon under a real systemd (Debian in systemd-nspawn): installed with
`hivemind-worker install`, enrolled to a dev-master on the host, started by the
installed unit. Shows: active only after READY=1, STATUS= in `systemctl status`,
a SIGSTOPped daemon restarted by the watchdog, a clean drain on `systemctl stop`,
and the daemon's structured lines in `journalctl -o json`.

The watchdog is shortened to 4 s by a drop-in so the test does not wait 30 s; the
unit is otherwise exactly what `install` wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import cli, free_port

pytestmark = [pytest.mark.system, pytest.mark.root]

HW = "/opt/hivemind-worker/bin/hivemind-worker"


@pytest.fixture
def dev_master(tmp_path):
    state = tmp_path / "dev-master"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemind_worker", "dev-master", "serve", "-s", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    address = ca_hash = None
    deadline = time.monotonic() + 30
    while (address is None or ca_hash is None) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("dev-master listening on "):
            address = line.split()[3]
        elif line.startswith("CA hash: "):
            ca_hash = line.split()[2]
    if address is None or ca_hash is None:
        proc.kill()
        pytest.fail("dev-master did not start")
    try:
        yield address, ca_hash, state
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_daemon_under_systemd(worker_machine, dev_master):
    m = worker_machine
    address, ca_hash, state = dev_master
    m.exec(HW, "install")
    m.write("/etc/hivemind-worker/worker.toml", f"monitor_port = {free_port()}\ndrain_timeout_s = 10\n", 0o640)
    m.exec("chown", "root:hivemind-worker", "/etc/hivemind-worker/worker.toml")
    token = cli("dev-master", "token", "create", "-s", str(state), check=True).stdout.strip()
    m.exec(HW, "enroll", "--master", address, "--token", token, "--ca-hash", ca_hash, timeout=60)
    # Root's, readable by the service group: the daemon reads it, a compromised service
    # user cannot rewrite what root-run commands trust (SECURITY.md).
    owners = m.exec("stat", "-c", "%n %U:%G %a", "/etc/hivemind-worker/node.json").stdout
    assert "root:hivemind-worker 640" in owners, owners
    m.write("/etc/systemd/system/hivemind-worker.service.d/test.conf", "[Service]\nWatchdogSec=4\n")
    m.exec("systemctl", "daemon-reload")

    # Active only after READY=1: the unit is "activating" while the daemon starts.
    m.exec("systemctl", "start", "--no-block", "hivemind-worker")
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state_now = m.exec("systemctl", "is-active", "hivemind-worker", check=False).stdout.strip()
        seen.add(state_now)
        if state_now in ("active", "failed"):
            break
        time.sleep(0.05)
    m.wait_active("hivemind-worker", timeout_s=5)
    assert "activating" in seen, seen
    status = m.exec("systemctl", "status", "--no-pager", "-l", "hivemind-worker", check=False).stdout
    status_text = m.show("hivemind-worker", "StatusText")
    assert status_text and f'Status: "{status_text}"' in status, status
    assert m.show("hivemind-worker", "User") == "hivemind-worker"

    # A healthy enrolled host: the doctor finds nothing to fail and exits 0.
    doctor = m.exec(HW, "doctor", check=False, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for line in ("PASS  enrolled", "PASS  credential files", "PASS  docker access", "PASS  master reachable",
                 "PASS  credential accepted", "PASS  systemd unit", "PASS  monitor port"):
        assert line in doctor.stdout, doctor.stdout

    # A frozen event loop stops the pings; systemd kills and restarts the daemon.
    first_pid = m.show("hivemind-worker", "MainPID")
    m.exec("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", "hivemind-worker")
    m.wait_for(lambda: m.show("hivemind-worker", "NRestarts") == "1", timeout_s=20, what="a watchdog restart")
    m.wait_active("hivemind-worker", timeout_s=60)
    assert m.show("hivemind-worker", "MainPID") != first_pid
    text_log = m.exec("journalctl", "-u", "hivemind-worker", "--no-pager", check=False).stdout
    assert "Watchdog timeout" in text_log, text_log

    # `systemctl stop`: SIGTERM -> STOPPING=1, hand running tasks over (stop_mode
    # handoff, the default), clean exit.
    stop_started = time.monotonic()
    m.exec("systemctl", "stop", "hivemind-worker", timeout=90)
    assert time.monotonic() - stop_started < 40
    assert m.show("hivemind-worker", "Result") == "success", m.show("hivemind-worker", "Result")

    daemon_lines = []
    for entry in m.journal("hivemind-worker"):
        message = entry.get("MESSAGE")
        if isinstance(message, str) and message.startswith("{"):
            daemon_lines.append(json.loads(message))
    assert daemon_lines, "no JSON lines from the daemon in the journal"
    assert all("level" in line and "logger" in line for line in daemon_lines)
    assert any(line.get("node_id") for line in daemon_lines), daemon_lines[:5]
    assert any("keep running for the next agent" in line.get("message", "") for line in daemon_lines), \
        [l.get("message") for l in daemon_lines]
