"""systemd (booted in systemd-nspawn) drives a Type=notify service that uses our
sd_notify wrapper: active only after READY=1, STATUS= in `systemctl status`,
watchdog restart of a frozen process, clean stop, JSON lines in the journal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system, pytest.mark.root]

PROBE = (Path(__file__).parent / "notify_probe.py").read_text()
UNIT = """\
[Unit]
Description=notify probe

[Service]
Type=notify
NotifyAccess=main
ExecStart=/opt/hivemind-worker/bin/python /usr/local/lib/notify_probe.py
Environment=PROBE_STARTUP_S=2
WatchdogSec=3
Restart=on-failure
RestartSec=1
TimeoutStopSec=10
KillMode=mixed
"""


def test_ready_status_watchdog_stop_journal(worker_machine):
    m = worker_machine
    m.write("/usr/local/lib/notify_probe.py", PROBE)
    m.write("/etc/systemd/system/probe.service", UNIT)
    m.exec("systemctl", "daemon-reload")

    m.exec("systemctl", "start", "--no-block", "probe.service")
    time.sleep(0.5)
    assert m.exec("systemctl", "is-active", "probe.service", check=False).stdout.strip() == "activating"
    assert 'Status: "starting up"' in m.exec("systemctl", "status", "--no-pager", "probe.service", check=False).stdout
    m.wait_active("probe.service", timeout_s=20)
    started = int(m.show("probe.service", "ExecMainStartTimestampMonotonic"))
    active = int(m.show("probe.service", "ActiveEnterTimestampMonotonic"))
    assert active - started >= 1_900_000, "the unit became active before READY=1"
    status = m.exec("systemctl", "status", "--no-pager", "probe.service", check=False).stdout
    assert 'Status: "serving: 0 tasks"' in status, status

    # Freeze the process: its pings stop, systemd's watchdog kills and restarts it.
    first_pid = m.show("probe.service", "MainPID")
    m.exec("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", "probe.service")
    m.wait_for(lambda: m.show("probe.service", "NRestarts") == "1", timeout_s=15, what="a watchdog restart")
    m.wait_active("probe.service", timeout_s=20)
    assert m.show("probe.service", "MainPID") != first_pid
    log = m.exec("journalctl", "-u", "probe.service", "--no-pager", check=False).stdout
    assert "Watchdog timeout" in log, log

    # SIGTERM: STOPPING=1, drain, exit 0.
    m.exec("systemctl", "stop", "probe.service", timeout=30)
    assert m.show("probe.service", "Result") == "success"
    assert m.show("probe.service", "ExecMainStatus") == "0"

    lines = []
    for entry in m.journal("probe.service"):
        message = entry.get("MESSAGE", "")
        if isinstance(message, str) and message.startswith("{"):
            lines.append(json.loads(message))
    assert any(e.get("message") == "probe ready" and e.get("node_id") == "node-probe" for e in lines), lines
    assert any(e.get("message") == "probe drained" for e in lines), lines
