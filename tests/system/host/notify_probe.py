"""A tiny Type=notify service built on hivemind_worker.systemd.notify, standing in
for the daemon: STATUS while starting, READY=1 after PROBE_STARTUP_S, watchdog pings
from its loop, STOPPING=1 and a clean exit on SIGTERM, JSON log lines. With
PROBE_CHECKS=1 it also proves the sandbox: Docker socket reachable, state directory
writable, /etc read-only (reported in its STATUS line)."""

import logging
import os
import signal
import socket
import sys
import time

from hivemind_worker.logs import setup_logging
from hivemind_worker.systemd.notify import SystemdNotifier, watchdog_interval

setup_logging("INFO", "auto")
log = logging.getLogger("probe")
notifier = SystemdNotifier()
stopping = False


def on_term(*_):
    global stopping
    stopping = True


def sandbox_report() -> str:
    parts = []
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect("/run/docker.sock")
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            parts.append("docker=" + ("ok" if b"OK" in s.recv(4096) else "bad"))
    except OSError as exc:
        parts.append(f"docker=error:{exc.errno}")
    try:
        with open("/var/lib/hivemind-worker/probe", "w") as fh:
            fh.write("x")
        parts.append("state=rw")
    except OSError as exc:
        parts.append(f"state=error:{exc.errno}")
    try:
        open("/etc/hivemind-worker/probe", "w").close()
        parts.append("etc=rw")
    except OSError:
        parts.append("etc=ro")
    return " ".join(parts)


signal.signal(signal.SIGTERM, on_term)
notifier.status("starting up")
time.sleep(float(os.environ.get("PROBE_STARTUP_S", "2")))
extra = sandbox_report() if os.environ.get("PROBE_CHECKS") else ""
notifier.ready(f"serving: 0 tasks {extra}".strip())
log.info("probe ready", extra={"node_id": "node-probe"})
interval = watchdog_interval() or 1.0
while not stopping:
    notifier.watchdog()
    time.sleep(min(interval, 0.5))
notifier.stopping("draining: 0 tasks left")
log.info("probe drained", extra={"node_id": "node-probe"})
time.sleep(0.3)
sys.exit(0)
