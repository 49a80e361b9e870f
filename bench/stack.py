"""The benches' local cluster: a dev-master and one enrolled daemon on loopback,
each a subprocess, in a temporary directory that is kept when something failed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = os.environ.get("HIVEMIND_TEST_TASK_IMAGE", "hivemind-task-runtime:local")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevStack:
    """A dev-master and one enrolled node (`hivemind-worker run`) on loopback, each a
    subprocess of its own, in a temporary directory (kept when something failed)."""

    def __init__(self, prefix: str, env: dict[str, str]) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.master_dir, self.port = self.base / "master", free_port()
        self.env = {
            **os.environ, "HIVEMIND_CONFIG_DIR": str(self.base / "config"),
            "HIVEMIND_STATE_DIR": str(self.base / "state"), "HIVEMIND_TASK_IMAGE": IMAGE,
            "HIVEMIND_MONITOR_ENABLED": "false", "HIVEMIND_LOG_LEVEL": "WARNING",
            # A crowded bench machine must not look like host pressure (the node
            # would refuse tasks).
            "HIVEMIND_PRESSURE_CPU_PERCENT": "100", "HIVEMIND_PRESSURE_MEMORY_PERCENT": "100",
            **env,
        }
        self.procs: list[subprocess.Popen] = []
        self.worker: subprocess.Popen | None = None
        self.ok = False

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "hivemind_worker", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"`hivemind-worker {' '.join(args[:2])}` failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def spawn(self, log: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "hivemind_worker", *args], env=self.env,
                                stdout=(self.base / log).open("a"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> "DevStack":
        from hivemind_worker.devmaster.layout import StateDir

        addr = f"127.0.0.1:{self.port}"
        self.spawn("master.log", "dev-master", "serve", "--state-dir", str(self.master_dir), "--listen", addr)
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", self.port)) != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the dev-master did not start; see " + str(self.base / "master.log"))
            time.sleep(0.1)
        token = self.cli("dev-master", "token", "create", "--state-dir", str(self.master_dir))
        ca_hash = self.cli("dev-master", "ca-hash", "--state-dir", str(self.master_dir))
        self.cli("enroll", "--master", addr, "--token", token, "--ca-hash", ca_hash)
        self.worker = self.spawn("worker.log", "run")
        self.state = StateDir(self.master_dir)
        self.conn = sqlite3.connect(self.state.db)
        self.conn.row_factory = sqlite3.Row
        return self

    def submit(self, command: tuple[str, ...], cpus: float = 0.25, memory: str = "128m") -> str:
        from hivemind_worker.devmaster.submit import SubmitRequest, submit

        req = SubmitRequest.build(path=None, command=shlex.join(command), image=IMAGE, cpus=cpus,
                                  memory=memory, timeout="30m")
        return submit(self.state, req)

    def done(self, ids: list[str]) -> list[sqlite3.Row]:
        """Tasks whose DONE the master received: task_id, assigned_at, outcome, done_at."""
        marks = ",".join("?" * len(ids))
        return self.conn.execute(
            f"SELECT t.task_id, t.assigned_at, t.outcome, MAX(e.received_at) AS done_at FROM tasks t "
            f"JOIN task_events e ON e.task_id = t.task_id AND e.state = 'done' "
            f"WHERE t.task_id IN ({marks}) GROUP BY t.task_id", ids,
        ).fetchall()

    def wait_done(self, ids: list[str], timeout: float) -> list[sqlite3.Row]:
        deadline = time.monotonic() + timeout
        while len(rows := self.done(ids)) < len(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(rows)} of {len(ids)} tasks finished; see {self.base}")
            time.sleep(0.1)
        return rows

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.ok:
            shutil.rmtree(self.base, ignore_errors=True)

    def wait_connected(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            nodes = json.loads(self.cli("dev-master", "nodes", "--state-dir", str(self.master_dir), "--json"))
            if nodes and nodes[0].get("session") == "connected":
                return
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the worker did not connect: " + (self.base / "worker.log").read_text()[-800:])
            time.sleep(0.3)
