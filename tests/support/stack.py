"""A real dev-master and real worker daemons as subprocesses, over loopback gRPC+TLS:
the harness the integration tests and the benches share."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import cli, free_port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class DevMaster:
    def __init__(self, state: Path, port: int, log: Path, extra: tuple[str, ...] = ()):
        self.state, self.port, self.log, self.extra = state, port, log, extra
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hivemind_worker", "dev-master", "serve", "--state-dir", str(self.state),
             "--listen", self.address, *self.extra],
            stdout=out, stderr=subprocess.STDOUT,
        )
        def listening():
            assert self.proc.poll() is None, f"dev-master exited: {self.log.read_text()[-2000:]}"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 30, "the dev-master to listen")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def run(self, *args: str) -> str:
        done = cli("dev-master", *args, "--state-dir", str(self.state), check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def submit(self, *args: str) -> str:
        """`hivemind-worker submit ARGS` without --wait: prints the task id."""
        done = cli("submit", *args, "--state-dir", str(self.state), check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split()[-1]

    def ca_hash(self) -> str:
        return self.run("ca-hash")

    def token(self, *args: str) -> str:
        return self.run("token", "create", *args)

    def nodes(self) -> list[dict]:
        return json.loads(self.run("nodes", "--json"))


class Node:
    """One worker node's directories and its daemon process."""

    def __init__(self, base: Path, **settings):
        self.config_dir = base / "config"
        self.state_dir = base / "state"
        self.log = base / "worker.log"
        self.env = {
            "HIVEMIND_CONFIG_DIR": str(self.config_dir),
            "HIVEMIND_STATE_DIR": str(self.state_dir),
            "HIVEMIND_MONITOR_PORT": str(free_port()),
            "HIVEMIND_LOG_FORMAT": "text",
            # CI's two cores are busy with other tests; host pressure would (rightly)
            # stop admission, which is tested in tests/*/tasks, not here.
            "HIVEMIND_PRESSURE_CPU_PERCENT": "100",
            "HIVEMIND_PRESSURE_MEMORY_PERCENT": "100",
            **{f"HIVEMIND_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.proc: subprocess.Popen | None = None

    def enroll(self, master: DevMaster, token: str | None = None, ca_hash: str | None = None):
        return cli("enroll", "--master", master.address, "--token", token or master.token(),
                   "--ca-hash", ca_hash or master.ca_hash(), env=self.env)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hivemind_worker", "run"],
            env={**os.environ, **self.env}, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.env['HIVEMIND_MONITOR_PORT']}"

    def node_id(self) -> str:
        return json.loads((self.config_dir / "node.json").read_text())["node_id"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
