"""Bytes on the wire and worker CPU time per telemetry report, with 1 and with 200
simulated nodes on one dev-master.

Each simulated node is the worker's real session code (ControlSession over a TLS
channel with the pinned CA, real enrollment) sending the daemon's real reports
(TelemetryService: collectors, reward ledger, history). Their traffic
passes through a counting TCP proxy on loopback, so the byte figures include TLS,
HTTP/2 framing and keepalives. CPU time is this process's (all simulated nodes)
divided by the reports sent.

    .venv/bin/python bench/session.py [--nodes 1 200] [--seconds 20] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import free_port  # bench/ runs as scripts: bench/stack.py is importable

from hivemind_worker.address import parse_master_address
from hivemind_worker.agent.facts import gather_facts
from hivemind_worker.config import load_settings
from hivemind_worker.control.channel import open_channel
from hivemind_worker.control.enroll import enroll
from hivemind_worker.control.session import ControlSession
from hivemind_worker.control.messages import NodeHello
from hivemind_worker.tasks.model import Resources
from hivemind_worker.telemetry.service import TelemetryService
from hivemind_worker.vpn.keys import generate_keypair


class CountingProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.up = 0  # worker -> master
        self.down = 0

    async def _pipe(self, reader, writer, direction: str):
        try:
            while data := await reader.read(65536):
                setattr(self, direction, getattr(self, direction) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer):
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, w2, "up"), self._pipe(r2, writer, "down"))
        except asyncio.CancelledError:  # the bench is over
            pass

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


class BenchHandler:
    def __init__(self, node_id: str):
        self.node_id = node_id

    def hello(self):
        return NodeHello(node_id=self.node_id, agent_version="bench", capacity=Resources(), free=Resources())

    async def on_connected(self, welcome):
        pass

    async def on_message(self, message):
        pass

    async def on_disconnected(self):
        pass


async def run_case(master_port: int, state: Path, nodes: int, seconds: float, interval: float) -> dict:
    env = {**os.environ}
    cli = [sys.executable, "-m", "hivemind_worker", "dev-master"]
    ca_hash = subprocess.run([*cli, "ca-hash", "--state-dir", str(state)], capture_output=True, text=True, check=True).stdout.strip()
    token = subprocess.run([*cli, "token", "create", "--state-dir", str(state), "--uses", str(nodes), "--ttl", "1h"],
                           capture_output=True, text=True, check=True, env=env).stdout.strip()
    proxy = CountingProxy(master_port)
    proxy_port = await proxy.start()
    address = parse_master_address(f"127.0.0.1:{proxy_port}")
    facts = await gather_facts()
    settings = load_settings(environ={"HIVEMIND_CONFIG_DIR": str(state / "none"), "HIVEMIND_STATE_DIR": str(state / "node")})
    telemetry = TelemetryService(settings)  # the daemon's real per-report work
    identities = []
    ca_pem = None
    for _ in range(nodes):
        reply, ca_pem = await enroll(address, token, ca_hash, facts, generate_keypair().public_key, settings.max_message_bytes)
        identities.append((reply.node_id, reply.node_credential))

    should_exit = asyncio.Event()
    sessions, handlers = [], []
    for node_id, credential in identities:
        session = ControlSession(lambda: open_channel(address, ca_pem, settings.max_message_bytes), node_id, credential,
                                 reconnect_initial_s=1, reconnect_max_s=5, target=address.target)
        sessions.append(session)
        handlers.append(BenchHandler(node_id))
    runners = [asyncio.create_task(s.run(should_exit, h)) for s, h in zip(sessions, handlers)]
    while not all(s.connected for s in sessions):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)

    up0, down0 = proxy.up, proxy.down
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    sent = 0
    sample_costs = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        for session in sessions:
            t = time.process_time()
            if session.send_report(await telemetry.sample()):
                sent += 1
            sample_costs.append(time.process_time() - t)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - tick)))
    await asyncio.sleep(1)  # let the last reports leave
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    up, down = proxy.up - up0, proxy.down - down0
    should_exit.set()
    for s in sessions:
        s.close_stream()
    await asyncio.gather(*runners, return_exceptions=True)
    proxy.server.close()
    telemetry.close()
    return {
        "nodes": nodes,
        "reports": sent,
        "bytes_up_per_report": round(up / max(sent, 1), 1),
        "bytes_down_per_report": round(down / max(sent, 1), 1),
        "cpu_ms_per_report": round(1000 * cpu / max(sent, 1), 3),
        "median_report_step_ms": round(1000 * statistics.median(sample_costs), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reports per node")
    args = parser.parse_args()
    results = []
    for n in args.nodes:
        with tempfile.TemporaryDirectory(prefix="bench-session-") as tmp:
            state, port = Path(tmp) / "master", free_port()
            master = subprocess.Popen([sys.executable, "-m", "hivemind_worker", "dev-master", "serve", "--state-dir", str(state),
                                       "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(200):
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    await asyncio.sleep(0.1)
                results.append(await run_case(port, state, n, args.seconds, args.interval))
                print(json.dumps(results[-1]), flush=True)
            finally:
                master.send_signal(signal.SIGTERM)
                master.wait(20)
    print()
    print(f"{'nodes':>6} {'reports':>8} {'B up/report':>12} {'B down/report':>14} {'CPU ms/report':>14}")
    for r in results:
        print(f"{r['nodes']:>6} {r['reports']:>8} {r['bytes_up_per_report']:>12} {r['bytes_down_per_report']:>14} {r['cpu_ms_per_report']:>14}")


if __name__ == "__main__":
    asyncio.run(main())
