"""Lifecycle of `dev-master serve`: startup -> main loop -> shutdown, as uvicorn's.

Startup makes the state directory, the CA (first start) and a fresh server
certificate, opens the database, starts the gRPC server (grpc.aio) and writes
master.json. The main loop wakes on in-process events or every ``poll_interval_s``
and, when another process committed to the database (``PRAGMA data_version``) or a
session changed, runs the assignment / cancellation / revocation pass; about once a
second it also looks for absent nodes and tasks deferred too long (``attempts``). Signal
handlers only set ``should_exit``. This module never prints; ``on_ready`` tells
the caller the address and the CA hash.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from hivemind_worker.address import is_loopback_host
from hivemind_worker.devmaster import ca, registry
from hivemind_worker.devmaster.attempts import RetryPolicy
from hivemind_worker.devmaster.db import ChangeWatch, open_db
from hivemind_worker.devmaster.hub import VpnHub
from hivemind_worker.devmaster.layout import StateDir, split_listen
from hivemind_worker.devmaster.service import (DEFAULT_MAX_RESULT_BYTES, ControlService, VpnSettings,
                                               tunnel_master_address)
from hivemind_worker.devmaster.sessions import ACK_HOLD_S, SessionHub
from hivemind_worker.devmaster.taskdb import LogLimits
from hivemind_worker.errors import ConfigError
from hivemind_worker.proto import worker_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

MIN_MESSAGE_BYTES = 64 * 1024
SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True)
class MasterConfig:
    state_dir: Path
    listen: str = "127.0.0.1:50051"  # port 0 picks a free one (see DevMaster.address)
    insecure: bool = False
    max_message_bytes: int = 4 * 1024 * 1024
    heartbeat_s: int = 30
    vpn_subnet: str = registry.DEFAULT_SUBNET
    poll_interval_s: float = 0.2
    extra_hosts: tuple[str, ...] = field(default=())  # more names for the server certificate
    retry: RetryPolicy = RetryPolicy()
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    log_limits: LogLimits = LogLimits()
    event_ack_hold_s: float = ACK_HOLD_S  # (tests shorten it; no CLI option)

    def validate(self) -> None:
        host, _ = split_listen(self.listen)
        if self.insecure and not is_loopback_host(host):
            raise ConfigError(
                f"--insecure is refused for {self.listen}: plain text is allowed on loopback only "
                "(127.0.0.1, ::1, localhost); drop --insecure to serve TLS"
            )
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ConfigError(f"--max-message-bytes must be at least {MIN_MESSAGE_BYTES}")
        if self.heartbeat_s < 1:
            raise ConfigError("--report-interval must be at least 1 second")
        r, logs = self.retry, self.log_limits
        if r.max_retries < 0:
            raise ConfigError("--max-retries must be 0 (never run a lost task again) or more")
        if r.defer_limit_s <= 0 or r.node_lost_after_s <= 0:
            raise ConfigError("--defer-limit and --node-lost-after must be longer than 0 seconds, e.g. 10m")
        if self.max_result_bytes < 1 or min(logs.max_lines, logs.max_bytes, logs.max_line_bytes) < 1:
            raise ConfigError("--max-result-bytes, --max-log-lines, --max-log-bytes and --max-log-line-bytes "
                              "must be at least 1")


class DevMaster:
    def __init__(self, config: MasterConfig, hub: VpnHub | None = None) -> None:
        config.validate()
        self.config = config
        self.hub = hub
        self.state = StateDir(Path(config.state_dir).absolute())
        self.should_exit = False
        self.address = ""
        self.ca_hash = ""
        self._wake = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self.conn: sqlite3.Connection | None = None  # open between startup and shutdown
        self.sessions: SessionHub | None = None
        self._hub_removed: set[str] = set()
        self._lock_fd: int | None = None
        self.ticks = 0  # main-loop turns, so a test can wait for a whole pass instead of sleeping

    async def startup(self) -> None:
        host, port = split_listen(self.config.listen)
        self.state.create()
        self._lock()
        ca.ensure_ca(self.state)
        self.ca_hash = ca.ca_hash(self.state)
        self.conn = conn = open_db(self.state.db)
        registry.reset_sessions(conn)
        limit = self.config.max_message_bytes
        self.sessions = SessionHub(conn, self._wake, self.state, self.config.retry, self.config.log_limits,
                                   max_message_bytes=limit, ack_hold_s=self.config.event_ack_hold_s)
        hub_ip = registry.hub_address(self.config.vpn_subnet).split("/")[0] if self.hub else ""
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Ping idle nodes, so a node that vanished without closing its connection
            # (power loss, network cut) is seen leaving within ~40 s.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        service = ControlService(
            self.state, conn, self.sessions, heartbeat_s=self.config.heartbeat_s, hub=self.hub,
            vpn=VpnSettings(subnet=self.config.vpn_subnet), max_message_bytes=limit,
            max_result_bytes=self.config.max_result_bytes,
        )
        pb_grpc.add_NodeControlServicer_to_server(service, self._server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.config.insecure:
                bound = self._server.add_insecure_port(target)
            else:
                chain, key = ca.issue_server_cert(self.state, [host, hub_ip, *self.config.extra_hosts])
                creds = grpc.ssl_server_credentials([(key, chain)])
                bound = self._server.add_secure_port(target, creds)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {self.config.listen}: {exc}; is the port in use?") from exc
        if not bound:
            raise ConfigError(f"cannot listen on {self.config.listen}; is the port in use or the address not local?")
        service.vpn = VpnSettings(subnet=self.config.vpn_subnet,
                                  master_address=tunnel_master_address(host, bound, self.config.vpn_subnet))
        await self._server.start()
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        if self.hub is not None:
            self._hub_removed = registry.revoked_keys(conn)  # a fresh hub never had them
            for peer_key, address in registry.active_peers(conn):
                await asyncio.to_thread(self.hub.add_peer, peer_key, address)
        self.state.write_master_info({
            "listen": self.address, "tls": not self.config.insecure, "ca_hash": self.ca_hash,
            "pid": os.getpid(), "max_message_bytes": limit,
        })
        logger.info("dev-master serving on %s (%s)", self.address, "plain text" if self.config.insecure else "TLS")

    def _lock(self) -> None:
        """One `serve` per state directory: two would both hand out the same queue."""
        path = self.state.root / "serve.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ConfigError(
                f"another `dev-master serve` is running on {self.state.root}; stop it first or use another --state-dir"
            ) from exc
        self._lock_fd = fd

    async def main_loop(self) -> None:
        conn, sessions = self._running()
        watch = ChangeWatch(conn)
        sessions.dispatch()
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL_S
        while not self.should_exit:
            try:  # (asyncio.timeout: no task per turn, as wait_for makes)
                async with asyncio.timeout(self.config.poll_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + SWEEP_INTERVAL_S
                self._sweep()
            woken = self._wake.is_set()
            self._wake.clear()
            if watch.changed() or woken:
                self._dispatch()
                await self._sync_hub()
            self.ticks += 1

    async def _sync_hub(self) -> None:
        """Drop revoked nodes' keys from the hub (revocation happens in another process)."""
        if self.hub is None:
            return
        # A key back in use by a re-enrolled node stays.
        conn, _ = self._running()
        active = {key for key, _ in registry.active_peers(conn)}
        for key in registry.revoked_keys(conn) - active - self._hub_removed:
            try:
                await asyncio.to_thread(self.hub.remove_peer, key)
            except Exception:  # the hub's error names the problem; the master keeps serving
                logger.exception("could not remove a revoked node from the WireGuard hub")
            self._hub_removed.add(key)

    def _sweep(self) -> None:
        try:
            self._running()[1].sweep()
        except Exception:  # as for _dispatch: logged, tried again next time
            logger.exception("sweep for absent nodes and long-deferred tasks failed")

    def _dispatch(self) -> None:
        try:
            self._running()[1].dispatch()
        except Exception:  # one bad row must not stop the master; it is logged and retried
            logger.exception("assignment pass failed")

    def _running(self) -> tuple[sqlite3.Connection, SessionHub]:
        if self.conn is None or self.sessions is None:
            raise ConfigError("the dev-master is not started; call startup() first")
        return self.conn, self.sessions

    async def shutdown(self) -> None:
        if self.sessions is not None:
            self.sessions.end_all()
        if self._server is not None:
            await self._server.stop(grace=2.0)
        if self.hub is not None:
            try:
                await asyncio.to_thread(self.hub.down)
            except Exception:  # shutting down anyway; the operator sees why
                logger.exception("WireGuard hub did not go down cleanly")
        if self.conn is not None:
            self.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        logger.info("dev-master stopped")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_exit)

    def request_exit(self) -> None:
        self.should_exit = True
        self._wake.set()

    async def serve(self, on_ready: Callable[["DevMaster"], None] | None = None) -> None:
        try:
            await self.startup()
            if on_ready is not None:
                on_ready(self)
            await self.main_loop()
        finally:
            await self.shutdown()


def run(config: MasterConfig, hub: VpnHub | None = None,
        on_ready: Callable[[DevMaster], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (blocking; the CLI's entry point)."""

    async def main() -> None:
        master = DevMaster(config, hub)
        master.install_signal_handlers()
        await master.serve(on_ready)

    asyncio.run(main())
