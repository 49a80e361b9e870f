"""`hivemind-worker demo`: the whole loop on loopback, in a temporary directory.

It runs the same commands an operator would (dev-master serve, token create,
enroll, run, submit --wait) as child processes, so what the demo shows is what a
real node does. ``echo`` is how it talks to the person watching; nothing else here
prints.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from hivemind_worker.errors import HostError

SAMPLE_MAIN = '''\
import os, platform, json
print("hello from a HiveMind task on", platform.node())
total = sum(i * i for i in range(1_000_000))
print("sum of squares below one million:", total)
out = os.environ["HIVEMIND_OUTPUT_DIR"]
with open(os.path.join(out, "result.json"), "w") as fh:
    json.dump({"sum_of_squares": total}, fh)
print("wrote result.json")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hivemind_worker", *args]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HostError(f"{what} exited early (code {proc.returncode}); run with --debug to see why")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise HostError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def _docker_ready(image: str) -> str:
    """Empty when tasks can run here, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get(image)
        return ""
    except Exception as exc:  # any reason to skip the task part, said to the user
        return f"{type(exc).__name__}: {exc}"


def run_demo(echo: Callable[[str], None], keep: bool = False, image: str = "hivemind-task-runtime:local") -> Path:
    base = Path(tempfile.mkdtemp(prefix="hivemind-demo-"))
    master_dir, config_dir, state_dir = base / "master", base / "node-config", base / "node-state"
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(config_dir), "HIVEMIND_STATE_DIR": str(state_dir)}
    env["HIVEMIND_MONITOR_PORT"] = str(_free_port())
    env["RESOURCE_REPORT_INTERVAL"] = "2"
    # A first run on a busy laptop should still show a task: the demo node does not
    # refuse work for host pressure (a real node does; see pressure_cpu_percent).
    env.setdefault("HIVEMIND_PRESSURE_CPU_PERCENT", "100")
    env.setdefault("HIVEMIND_PRESSURE_MEMORY_PERCENT", "100")
    port = _free_port()
    procs: list[subprocess.Popen] = []
    log = (base / "demo.log").open("w")

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen(_cli(*args), env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def call(*args: str) -> str:
        done = subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise HostError(f"`hivemind-worker {' '.join(args[:2])}` failed: {done.stderr.strip()}")
        return done.stdout.strip()

    try:
        echo(f"1. Starting a dev-master on 127.0.0.1:{port} (state in {master_dir})")
        master = start("dev-master", "serve", "--state-dir", str(master_dir), "--listen", f"127.0.0.1:{port}")
        _wait_port(port, master, "the dev-master")
        ca_hash = call("dev-master", "ca-hash", "--state-dir", str(master_dir))
        token = call("dev-master", "token", "create", "--state-dir", str(master_dir), "--ttl", "10m")
        echo(f"2. Enrolling this machine (CA pinned as {ca_hash[:23]}...)")
        echo("   " + call("enroll", "--master", f"127.0.0.1:{port}", "--token", token, "--ca-hash", ca_hash).splitlines()[0])
        echo(f"3. Starting the worker daemon (monitor on http://127.0.0.1:{env['HIVEMIND_MONITOR_PORT']}/monitor.html)")
        start("run")
        deadline = time.monotonic() + 20
        while "connected" not in call("dev-master", "nodes", "--state-dir", str(master_dir)):
            if time.monotonic() > deadline:
                raise HostError(f"the worker did not connect within 20 s; see {base / 'demo.log'}")
            time.sleep(0.3)
        echo("   " + call("dev-master", "nodes", "--state-dir", str(master_dir)).splitlines()[-1])
        why_not = _docker_ready(image)
        if why_not:
            echo(f"4. Skipping the sample task: Docker or the task image {image} is not ready ({why_not}).")
            echo("   Build the image with images/task-runtime/build-from-debian.sh and start dockerd, then run the demo again.")
            return base
        bundle = base / "sample-task"
        bundle.mkdir()
        (bundle / "main.py").write_text(SAMPLE_MAIN)
        results = base / "results"
        echo("4. Submitting a sample task and following its logs:")
        done = subprocess.run(
            _cli("submit", str(bundle), "--state-dir", str(master_dir), "--image", image, "--cpus", "1",
                 "--memory", "256m", "--timeout", "5m", "--wait", "--output", str(results)),
            env=env, capture_output=True, text=True, timeout=600,
        )
        for line in done.stdout.splitlines():
            echo("   | " + line)
        if done.returncode != 0:
            raise HostError(f"the sample task failed (exit {done.returncode}): {done.stderr.strip()}")
        for line in done.stderr.strip().splitlines()[-2:]:
            echo("   " + line)
        echo(f"5. Result archive(s) in {results}: {', '.join(p.name for p in sorted(results.iterdir()))}")
        return base
    finally:
        # The worker first (it drains and says goodbye), then the master.
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        if keep or (base / "results").exists():
            echo(f"Everything the demo made is in {base} (log: {base / 'demo.log'}).")
        else:
            shutil.rmtree(base, ignore_errors=True)
