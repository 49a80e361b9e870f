"""The sd_notify wrapper against a real notify socket, watchdog_interval, and the
shipped unit file being exactly what `install` renders by default."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hivemind_worker.systemd.notify import FakeNotifier, SystemdNotifier, watchdog_interval
from hivemind_worker.systemd.unit import render_unit

REPO = Path(__file__).resolve().parents[3]


def test_real_notifier_sends_datagrams(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = SystemdNotifier()
        notifier.ready("serving\n2 tasks")
        notifier.status("draining")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping("bye")
        notifier.extend_timeout(30)
        got = [server.recv(4096).decode() for _ in range(6)]
    assert got == ["READY=1\nSTATUS=serving 2 tasks", "STATUS=draining", "WATCHDOG=1", "RELOADING=1",
                   "STOPPING=1\nSTATUS=bye", "EXTEND_TIMEOUT_USEC=30000000"]


def test_real_notifier_is_silent_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready("x")  # no socket: nothing happens, nothing raises
    notifier.watchdog()


def test_fake_notifier_records():
    fake = FakeNotifier()
    fake.status("starting")
    fake.ready("serving")
    fake.stopping()
    assert fake.sent == ["STATUS=starting", "READY=1", "STATUS=serving", "STOPPING=1"]
    assert fake.statuses == ["starting", "serving"]


def test_watchdog_interval():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_packaged_unit_is_the_default_render():
    shipped = (REPO / "packaging" / "systemd" / "hivemind-worker.service").read_text()
    assert shipped == render_unit(), "regenerate: python -c 'from hivemind_worker.systemd.unit import render_unit; print(render_unit(), end=\"\")' > packaging/systemd/hivemind-worker.service"


def test_unit_renders_executable_and_drain_margin():
    text = render_unit(Path("/srv/venv with space/bin/hivemind-worker"), "hm", drain_timeout_s=120)
    assert "ExecStart='/srv/venv with space/bin/hivemind-worker' run" in text
    assert "TimeoutStopSec=150" in text
    assert "User=hm\nGroup=hm\nSupplementaryGroups=docker" in text
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure", "KillMode=mixed",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/hivemind-worker", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "ProtectHome=yes", "ConditionPathExists=/etc/hivemind-worker/node.json"):
        assert line in text
