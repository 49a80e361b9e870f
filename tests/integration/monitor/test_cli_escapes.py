"""`hivemind-worker tasks` and `status` as real subprocesses against a live monitor
whose tasks carry escape sequences (an image name the master sent, a task id):
what reaches the terminal has none of them."""

from __future__ import annotations

import os
import subprocess
import sys

HOSTILE_IMAGE = "evil:1\x1b]0;owned\x07\x1b[2J\x1b[1;1H\x9b31m\rfake"
HOSTILE_ID = "t-\x1b[8mhidden"


def cli(tmp_path, port: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(tmp_path / "etc"), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
           "HIVEMIND_MONITOR_PORT": str(port)}
    return subprocess.run([sys.executable, "-m", "hivemind_worker", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_tasks_and_status_print_no_escape_sequences(tmp_path, fake_view, live_monitor):
    fake_view.report()
    fake_view.start_task(HOSTILE_ID, image=HOSTILE_IMAGE)
    tasks = cli(tmp_path, live_monitor.port, "tasks")
    assert tasks.returncode == 0, tasks.stderr
    row = [line for line in tasks.stdout.splitlines() if line.startswith("t-hidden")]
    assert row and row[0].endswith("evil:1fake"), tasks.stdout
    status = cli(tmp_path, live_monitor.port, "status")
    assert status.returncode == 0, status.stderr
    for out in (tasks.stdout, status.stdout):
        assert not any(c in out for c in "\x1b\x9b\x07\r"), repr(out)
