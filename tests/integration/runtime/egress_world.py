"""A small fake world for egress tests, all on this machine: one network namespace
holding (on its loopback) a "metadata" address (169.254.169.254), a "LAN" peer (10.213.250.5) and a
"public" peer (198.51.100.10, TEST-NET-2), each answering on one TCP port.

Only packets that arrive from the test's own bridge are routed there (a policy
routing rule on ``iif <bridge>``), so the host's own routes - and any real metadata
service - are never touched. Everything is removed by ``close()``.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

METADATA = "169.254.169.254"
LAN_PEER = "10.213.250.5"
PUBLIC_PEER = "198.51.100.10"

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.getsockname()[0].encode()); c.close()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@dataclass
class World:
    bridge: str  # the test network's bridge: only its packets are routed here
    port: int = 0
    http_dir: str = ""  # also serve this directory over HTTP on http_port (a package index)
    http_port: int = 0
    suffix: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    _server: subprocess.Popen | None = None
    _http: subprocess.Popen | None = None
    _undo: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"hm-egw-{self.suffix}"

    def open(self) -> "World":
        try:
            return self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> "World":
        ns, host_if, ns_if = self.netns, f"hmwh{self.suffix}", f"hmwn{self.suffix}"
        transit = random.randrange(100, 200)
        table, prio = str(20000 + random.randrange(10000)), str(900 + random.randrange(90))
        self.port = random.randrange(20000, 30000)
        sh("ip", "netns", "add", ns)
        self._undo.append(("ip", "netns", "del", ns))
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        self._undo.append(("ip", "link", "del", host_if))
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"10.213.{transit}.1/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        n = ("ip", "-n", ns)
        sh(*n, "addr", "add", f"10.213.{transit}.2/30", "dev", ns_if)
        sh(*n, "link", "set", ns_if, "up")
        sh(*n, "link", "set", "lo", "up")
        for ip in (METADATA, LAN_PEER, PUBLIC_PEER):  # no dummy module here: the namespace's lo
            sh(*n, "addr", "add", f"{ip}/32", "dev", "lo")
        for net in (f"{METADATA}/32", "10.213.250.0/24", "198.51.100.0/24"):
            sh("ip", "route", "add", net, "via", f"10.213.{transit}.2", "table", table)
        self._undo.append(("ip", "route", "flush", "table", table))
        sh("ip", "rule", "add", "iif", self.bridge, "lookup", table, "priority", prio)
        self._undo.append(("ip", "rule", "del", "iif", self.bridge, "lookup", table, "priority", prio))
        self._server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(self.port)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self._server.stdout is not None and self._server.stdout.readline().strip() == "ready"
        if self.http_dir:
            self.http_port = self.port + 1
            self._http = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(self.http_port),
                 "--bind", "0.0.0.0", "--directory", self.http_dir],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while sh("ip", "netns", "exec", ns, "ss", "-ltn", f"sport = :{self.http_port}").stdout.count("LISTEN") == 0:
                assert time.monotonic() < deadline, "the namespace's HTTP server did not listen"
                time.sleep(0.05)
        return self

    def close(self) -> None:
        for proc in (self._server, self._http):
            if proc is not None:
                proc.kill()
                proc.wait(10)
        for argv in reversed(self._undo):
            sh(*argv, check=False)


class HostService:
    """A TCP service on the host itself, bound to 0.0.0.0 on a free port."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(b"host")
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        time.sleep(0)


# Runs inside the task container: tries every target at once, prints one JSON line.
PROBE = """
import json, socket, sys, threading
targets = json.loads(sys.argv[1])
out = {}
def try_one(name, ip, port):
    try:
        with socket.create_connection((ip, port), timeout=4) as s:
            out[name] = "reached:" + s.recv(64).decode()
    except OSError as e:
        out[name] = "blocked:" + type(e).__name__
threads = [threading.Thread(target=try_one, args=(n, ip, p)) for n, (ip, p) in targets.items()]
[t.start() for t in threads]; [t.join() for t in threads]
print("PROBE " + json.dumps(out, sort_keys=True), flush=True)
"""
