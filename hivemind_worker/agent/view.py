"""The daemon's own part of the monitor's NodeView: node status and agent counters.

Everything here is read from in-memory state, so the monitor can call it on the
event loop at any time; the VPN state is refreshed by ``refresh_vpn`` (a `wg show`
in a thread) once per report, not per request.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable

from hivemind_worker import __version__
from hivemind_worker.agent.host import SessionHost
from hivemind_worker.agent.router import TaskService
from hivemind_worker.config import Settings
from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import VpnError
from hivemind_worker.identity import NodeIdentity
from hivemind_worker.tasks.model import DrainState
from hivemind_worker.vpn import tunnel

logger = logging.getLogger(__name__)


class AgentStatus:
    """Reads the parts the agent is built from (not the agent: the monitor that shows
    this is itself one of the agent's parts)."""

    def __init__(self, settings: Settings, identity: NodeIdentity, session: ControlSession, drain: DrainState,
                 host: SessionHost, tasks: TaskService | None, docker: dict[str, Any],
                 telemetry_reports: Callable[[], int] = lambda: 0) -> None:
        self._settings, self._identity, self._session, self._drain = settings, identity, session, drain
        self._host, self._tasks = host, tasks
        self._docker = docker
        self._reports = telemetry_reports
        self._started_at = time.time()
        self._hostname = socket.gethostname()
        self._vpn: dict[str, Any] = {"interface": settings.wireguard_interface, "up": False,
                                     "address": identity.vpn.address, "latest_handshake_ms": None}
        self._vpn_warned = False

    async def refresh_vpn(self) -> None:
        try:
            state = await tunnel.tunnel_status(self._settings.wireguard_interface)
        except VpnError as exc:  # e.g. not allowed to ask wireguard-go as the service user
            if not self._vpn_warned:
                logger.warning("cannot read the tunnel's state: %s", exc)
                self._vpn_warned = True
            return
        handshake = state.latest_handshake
        self._vpn.update(up=state.up, latest_handshake_ms=handshake * 1000 if handshake else None)

    def status(self) -> dict[str, Any]:
        session, identity = self._session, self._identity
        tasks = self._tasks
        capacity = tasks.capacity() if tasks else None
        return {
            "node_id": identity.node_id,
            "enrolled": True,
            "version": __version__,
            "hostname": self._hostname,
            "master": identity.master,
            "started_ms": int(self._started_at * 1000),
            "draining": self._drain.draining,
            "drain_reason": self._drain.reason,
            "session": {
                "state": session.state.value,
                "connected": session.connected,
                "since_ms": int(session.connected_since * 1000) if session.connected_since else None,
                "reconnects": session.reconnects,
                "last_error": session.last_error,
            },
            "vpn": dict(self._vpn),
            "docker": dict(self._docker),
            "capacity": {
                "cpus": capacity.cpu_millicores / 1000,
                "memory_bytes": capacity.memory_bytes,
                "gpus": capacity.gpu_count,
            } if capacity else {"cpus": 0.0, "memory_bytes": 0, "gpus": 0},
        }

    def counters(self) -> dict[str, Any]:
        counters = self._host.counters
        held = self._tasks.held_tasks() if self._tasks else []
        return {
            "reconnects_total": self._session.reconnects,
            "log_lines_sent_total": counters["log_lines_sent"],
            "log_bytes_sent_total": counters["log_bytes_sent"],
            "results_spooled": sum(1 for h in held if h.result_pending),
            "telemetry_reports_total": self._reports(),
        }
