"""``LiveNodeView``: the NodeView the daemon gives the monitor, assembled from the
parts it already has, and ``monitor_part``: the monitor as an ``AgentParts.monitor``.

The agent supplies what only it knows as small callables (status, counters, the task
manager's snapshot and log tail, running containers); telemetry, history and
earnings come from the TelemetryService. Everything here reads; nothing changes the
node. Call on the event loop only.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable

import psutil

from hivemind_worker.config import Settings
from hivemind_worker.monitor.app import create_app
from hivemind_worker.monitor.server import bind, serve
from hivemind_worker.monitor.view import NodeView
from hivemind_worker.telemetry.service import TelemetryService

_DELIVERED = {"done", "rejected"}  # nothing left on the node: history only


def _record(rec: Any) -> dict[str, Any]:
    """A tasks.model.LogRecord (or a dict) as JSON."""
    if isinstance(rec, dict):
        return rec
    d = asdict(rec) if is_dataclass(rec) and not isinstance(rec, type) else dict(vars(rec))
    stream = d.get("stream")
    d["stream"] = getattr(stream, "value", stream)
    return d


class LiveNodeView:
    def __init__(
        self,
        telemetry: TelemetryService,
        status: Callable[[], dict[str, Any]],
        counters: Callable[[], dict[str, Any]],
        task_snapshot: Callable[[], Iterable[dict[str, Any]]] = list,
        log_tail: Callable[[str, int], Iterable[Any]] = lambda task_id, n: (),
    ) -> None:
        """``status()``: NodeView.status() less "gpus" (filled from telemetry when
        absent); ``counters()``: agent_counters(); ``task_snapshot()``: the task
        manager's snapshot(); ``log_tail(task_id, n)``: its LogRecords."""
        self._telemetry = telemetry
        self._status = status
        self._counters = counters
        self._snapshot = task_snapshot
        self._log_tail = log_tail

    def status(self) -> dict[str, Any]:
        status = dict(self._status())
        if "gpus" not in status:
            latest = self._telemetry.history.latest
            status["gpus"] = [{"index": g.index, "name": g.name, "uuid": g.uuid} for g in (latest.gpus if latest else ())]
        return status

    def tasks(self) -> list[dict[str, Any]]:
        latest = self._telemetry.history.latest
        usage = {t.task_id: t for t in (latest.tasks if latest else ())}
        out = []
        for snap in self._snapshot():
            if str(snap.get("status")) in _DELIVERED:
                continue
            task = dict(snap)
            u = usage.get(task["task_id"])
            task.setdefault("cpu_percent", u.cpu_percent if u else None)
            task.setdefault("memory_bytes", u.memory_bytes if u else None)
            out.append(task)
        return out

    def task_logs(self, task_id: str, n: int) -> list[dict[str, Any]]:
        return [_record(r) for r in self._log_tail(task_id, n)]

    def history(self) -> list[dict[str, Any]]:
        return self._telemetry.task_history()

    def telemetry_series(self) -> list[dict[str, Any]]:
        return self._telemetry.telemetry_series()

    def latest_sample(self) -> dict[str, Any] | None:
        return self._telemetry.latest_sample()

    def earnings(self) -> dict[str, Any]:
        return self._telemetry.earnings()

    def agent_counters(self) -> dict[str, Any]:
        counters = dict(self._counters())
        counters.setdefault("telemetry_reports_total", self._telemetry.reports)
        return counters


def monitor_part(settings: Settings, view: NodeView) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None:
    """The monitor as ``AgentParts.monitor``; None when disabled. Binds the port now,
    so a taken port fails the daemon's start with a ConfigError naming the setting."""
    if not settings.monitor_enabled:
        return None
    sock = bind(settings.monitor_host, settings.monitor_port)
    app = create_app(view, allowed_hosts=allowed_hosts(settings.monitor_host, settings.monitor_tls_cert))

    async def run(should_exit: asyncio.Event) -> None:
        cert, key = settings.monitor_tls_cert, settings.monitor_tls_key
        tls = (cert, key) if cert and key else None  # load_settings refuses one without the other
        await serve(app, settings.monitor_host, settings.monitor_port, should_exit, sock=sock, tls=tls)

    return run


def allowed_hosts(monitor_host: str, tls_cert: Path | None = None) -> list[str]:
    """Host headers the monitor answers besides loopback: monitor_host, the names
    the operator's TLS certificate is for, and on a wildcard bind this machine's
    name and addresses. An IP literal is never a rebinding risk (a page cannot give
    its own origin someone else's address)."""
    hosts = [monitor_host]
    if monitor_host in ("0.0.0.0", "::", ""):
        hosts = [socket.gethostname()]  # not getfqdn: that may wait on DNS
        for addresses in psutil.net_if_addrs().values():
            hosts += [a.address.split("%")[0] for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)]
    hosts += _certificate_names(tls_cert)
    return [f"[{h}]" if ":" in h else h for h in hosts if h]


def _certificate_names(path: Path | None) -> list[str]:
    """The DNS names and IPs of a PEM certificate (wildcards kept: ``*.example.com``);
    [] when there is none or it cannot be read (serve() then says why)."""
    if path is None:
        return []
    # cryptography (~8 MB resident) only where the monitor serves TLS: most nodes do not.
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []
    return [*names.get_values_for_type(x509.DNSName), *(str(ip) for ip in names.get_values_for_type(x509.IPAddress))]
