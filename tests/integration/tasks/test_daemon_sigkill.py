"""The whole path, as an operator runs it: a dev-master, an enrolled daemon
(`hivemind-worker run`), a task in the real task image. The daemon is killed with
SIGKILL while the task prints; a new daemon on the same state directory re-attaches,
and the dev-master ends up with every log line exactly once, in order, and the
task's complete result."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.docker
LINES = 3000


def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Stack:
    def __init__(self, base: Path, image: str) -> None:
        self.base, self.master_dir, self.port = base, base / "master", free_port()
        self.env = {
            **os.environ, "HIVEMIND_CONFIG_DIR": str(base / "config"), "HIVEMIND_STATE_DIR": str(base / "state"),
            "HIVEMIND_TASK_IMAGE": image, "HIVEMIND_MONITOR_ENABLED": "false", "HIVEMIND_LOG_FORMAT": "text",
            "HIVEMIND_PRESSURE_CPU_PERCENT": "100", "HIVEMIND_PRESSURE_MEMORY_PERCENT": "100",
        }
        self.procs: list[subprocess.Popen] = []

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "hivemind_worker", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[:2]}: {done.stderr}"
        return done.stdout.strip()

    def spawn(self, log: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "hivemind_worker", *args], env=self.env,
                                stdout=(self.base / log).open("a"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        addr = f"127.0.0.1:{self.port}"
        self.spawn("master.log", "dev-master", "serve", "--state-dir", str(self.master_dir), "--listen", addr)
        until(lambda: socket.socket().connect_ex(("127.0.0.1", self.port)) == 0, 30, "the dev-master")
        token = self.cli("dev-master", "token", "create", "--state-dir", str(self.master_dir))
        ca_hash = self.cli("dev-master", "ca-hash", "--state-dir", str(self.master_dir))
        self.cli("enroll", "--master", addr, "--token", token, "--ca-hash", ca_hash)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.master_dir / "state.db")
        conn.row_factory = sqlite3.Row
        return conn

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def stack(tmp_path, task_image, docker_client):
    s = Stack(tmp_path, task_image)
    s.start()
    yield s
    s.stop()
    conn = s.db()
    nodes = {r[0] for r in conn.execute("SELECT node_id FROM tasks WHERE node_id IS NOT NULL")}
    conn.close()
    for node in nodes:  # a failed run must not leave its task container behind
        for c in docker_client.containers.list(all=True, filters={"label": f"hivemind.node_id={node}"}):
            c.remove(force=True)


def test_daemon_sigkilled_mid_task_restarts_and_delivers_everything_once(stack, tmp_path):
    from hivemind_worker.devmaster.layout import StateDir
    from hivemind_worker.devmaster.submit import SubmitRequest, submit

    code = (f"import os, time\nfor i in range({LINES}):\n    print(f'n {{i}}', flush=True)\n    time.sleep(0.002)\n"
            "open(os.path.join(os.environ['HIVEMIND_OUTPUT_DIR'], 'done.txt'), 'w').write('all %d' % i)\n")
    job = tmp_path / "job"
    job.mkdir()
    (job / "main.py").write_text(code)
    task_id = submit(StateDir(stack.master_dir), SubmitRequest.build(path=job, cpus=0.5, memory="256m", timeout="5m"))
    daemon = stack.spawn("worker-1.log", "run")
    conn = stack.db()

    def lines_at_master() -> int:
        return conn.execute("SELECT COUNT(*) FROM logs WHERE task_id=?", (task_id,)).fetchone()[0]

    until(lambda: lines_at_master() >= 200, 90, "the first log lines at the dev-master")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    partial = lines_at_master()
    assert partial < LINES, "the task finished before the daemon was killed; make it slower"
    time.sleep(0.5)  # the task keeps printing while no agent watches

    stack.spawn("worker-2.log", "run")
    row = until(lambda: (r := conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone())
                and r["result_complete"] and r["state"] == "done" and r, 180, "the task done with its result")
    assert (row["outcome"], row["exit_code"]) == ("exited", 0), dict(row)
    logs = conn.execute("SELECT seq, stream, text FROM logs WHERE task_id=? ORDER BY seq", (task_id,)).fetchall()
    texts = [r["text"] for r in logs if r["stream"] == "stdout"]
    assert [r["seq"] for r in logs] == list(range(1, len(logs) + 1))
    assert texts == [f"n {i}" for i in range(LINES)], "lines lost or doubled across the SIGKILL"
    states = [r["state"] for r in conn.execute("SELECT state FROM task_events WHERE task_id=? ORDER BY id", (task_id,))]
    assert states.count("exited") >= 1 and "done" in states
    result = StateDir(stack.master_dir).result(task_id)
    with tarfile.open(fileobj=io.BytesIO(result.read_bytes())) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert files["output/done.txt"] == f"all {LINES - 1}".encode()
    assert files["logs.txt"].decode().count("\n") >= LINES
    assert json.loads(files["exit.json"])["status"] == "exited"
    conn.close()
