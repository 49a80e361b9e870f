"""What `hivemind-worker status` and `tasks` show: the running daemon's /api/status, or - when
nothing answers - what is known offline (identity, earnings ledger, paths).

Core code: returns values and text lines, never prints or exits (the CLI does).
Read-only: the offline path opens the ledger read-only and creates nothing.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from hivemind_worker.config import Settings
from hivemind_worker.errors import HostError, WorkerError
from hivemind_worker.identity import load_identity
from hivemind_worker.telemetry.rewards import DB_FILE, utc_day


@dataclass
class LocalStatus:
    url: str
    running: bool
    status: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the daemon did not answer
    offline: dict[str, Any] = field(default_factory=dict)


def monitor_url(settings: Settings) -> str:
    host = settings.monitor_host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.monitor_tls_cert else "http"
    return f"{scheme}://{host}:{settings.monitor_port}"


def _get(settings: Settings, path: str, timeout_s: float) -> Any:
    """GET a JSON document from the local monitor (trusting its own certificate)."""
    context = None
    if settings.monitor_tls_cert:
        context = ssl.create_default_context(cafile=str(settings.monitor_tls_cert))
        context.check_hostname = False  # we dial 127.0.0.1; the certificate names the host
    with urllib.request.urlopen(monitor_url(settings) + path, timeout=timeout_s, context=context) as resp:
        return json.loads(resp.read())


def _offline(settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {"config_dir": str(settings.config_dir), "state_dir": str(settings.state_dir)}
    try:
        identity = load_identity(settings.config_dir)
        info.update(enrolled=True, node_id=identity.node_id, master=identity.master)
    except WorkerError as exc:
        info.update(enrolled=False, identity_error=str(exc))
    db = settings.state_dir / DB_FILE
    if db.exists():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                total = con.execute("SELECT COALESCE(SUM(reward), 0) FROM daily_rewards").fetchone()[0]
                today = con.execute("SELECT reward FROM daily_rewards WHERE day = ?",
                                    (utc_day(int(time.time() * 1000)),)).fetchone()
                info["earnings"] = {"total": int(total), "today": int(today[0]) if today else 0}
        except sqlite3.Error as exc:
            info["earnings_error"] = str(exc)
    return info


def read_local_status(settings: Settings, timeout_s: float = 3.0) -> LocalStatus:
    url = monitor_url(settings)
    if not settings.monitor_enabled:
        return LocalStatus(url, False, error="the monitor is disabled (monitor_enabled = false)",
                           offline=_offline(settings))
    try:
        return LocalStatus(url, True, status=_get(settings, "/api/status", timeout_s))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return LocalStatus(url, False, error=f"nothing answers on {url} ({reason})", offline=_offline(settings))


def read_local_tasks(settings: Settings, timeout_s: float = 3.0) -> dict[str, Any]:
    """The daemon's tasks and recent history; HostError when it does not answer."""
    try:
        return {"tasks": _get(settings, "/api/tasks", timeout_s), "history": _get(settings, "/api/history", timeout_s)}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HostError(f"the daemon's monitor at {monitor_url(settings)} does not answer ({getattr(exc, 'reason', exc)}); "
                        "is it running? systemctl status hivemind-worker") from exc


def format_tasks(listing: dict[str, Any], now_ms: int | None = None) -> list[str]:
    now_ms = now_ms or int(time.time() * 1000)
    lines = [f"{'TASK':<22} {'STATE':<11} {'SINCE':<12} {'EXIT':>4}  IMAGE"]
    for t in listing["tasks"]:
        exit_code = "" if t.get("exit_code") is None else str(t["exit_code"])
        lines.append(f"{t['task_id']:<22} {t['status']:<11} {_ago(t.get('started_ms'), now_ms):<12} {exit_code:>4}  "
                     f"{t.get('image', '')}")
    if len(lines) == 1:
        lines.append("(no tasks on this node)")
    if listing["history"]:
        lines += ["", f"{'FINISHED':<22} {'STATE':<11} {'WHEN':<12} {'EXIT':>4}  {'REWARD':<8} USED (signed record)"]
        for h in listing["history"][:10]:
            exit_code = "" if h.get("exit_code") is None else str(h["exit_code"])
            lines.append(f"{h['task_id']:<22} {h['state']:<11} {_ago(h.get('finished_ms'), now_ms):<12} "
                         f"{exit_code:>4}  {h.get('reward', ''):<8} {_used(h.get('usage'))}")
    return lines


def _used(u: dict[str, Any] | None) -> str:
    """CPU-seconds, peak memory, GPU-seconds and energy where the record has them."""
    if not u:
        return "-"
    parts = [f"{u['cpu_seconds']:.1f} CPU-s", f"{u['memory_peak_bytes'] / 2**20:.0f} MiB peak"]
    gpus = u.get("gpus") or []
    if gpus:
        parts.append(f"{sum(g['gpu_seconds'] for g in gpus):.1f} GPU-s")
    energies = [g["energy_j"] for g in gpus if "energy_j" in g] + ([u["cpu_energy_j"]] if "cpu_energy_j" in u else [])
    if energies:
        parts.append(f"{sum(energies):.0f} J")
    return ", ".join(parts)


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "never"
    s = max(0, (now_ms - ms) // 1000)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1f} %"


def format_status(ls: LocalStatus) -> list[str]:
    if not ls.running:
        off = ls.offline
        lines = [f"hivemind-worker is not running: {ls.error}"]
        if off.get("enrolled"):
            lines.append(f"  Enrolled   yes: node {off['node_id']}, master {off['master']}")
        else:
            lines.append(f"  Enrolled   no: {off.get('identity_error', '')}")
        if "earnings" in off:
            lines.append(f"  Earnings   today {off['earnings']['today']}, total {off['earnings']['total']}")
        lines.append(f"  Config     {off['config_dir']}")
        lines.append(f"  State      {off['state_dir']}")
        lines.append("  Start it:  systemctl start hivemind-worker   (or in the foreground: hivemind-worker run)")
        return lines
    s = ls.status
    now = int(s.get("server_time_ms") or time.time() * 1000)
    sess = s.get("session") or {}
    vpn = s.get("vpn") or {}
    docker = s.get("docker") or {}
    gpus = s.get("gpus") or []
    usage = s.get("usage") or {}
    earn = s.get("earnings") or {}
    tasks = s.get("tasks_by_state") or {}
    head = f"hivemind-worker {s.get('version', '')}"
    if s.get("hostname"):
        head += f" on {s['hostname']}"
    session = sess.get("state", "unknown")
    if sess.get("connected"):
        session += f" for {_ago(sess.get('since_ms'), now).replace(' ago', '')}"
    session += f" ({sess.get('reconnects', 0)} reconnects)"
    if sess.get("last_error") and not sess.get("connected"):
        session += f": {sess['last_error']}"
    vpn_line = f"{vpn.get('interface', 'wg0')} {'up' if vpn.get('up') else 'down'}"
    if vpn.get("address"):
        vpn_line += f", {vpn['address']}"
    vpn_line += f", last handshake {_ago(vpn.get('latest_handshake_ms'), now)}"
    return [
        head,
        f"  Node       {s.get('node_id') or '-'}" + (" (draining)" if s.get("draining") else ""),
        f"  Enrolled   {'yes, master ' + str(s.get('master')) if s.get('enrolled') else 'no'}",
        f"  Session    {session}",
        f"  VPN        {vpn_line}",
        f"  Docker     {('engine ' + docker.get('version', '')) if docker.get('available') else 'unavailable: ' + docker.get('error', '')}",
        f"  GPUs       {len(gpus)}" + (": " + ", ".join(g.get("name", "?") for g in gpus) if gpus else ""),
        f"  Usage      CPU {_pct(usage.get('cpu_percent'))}, memory {_pct(usage.get('memory_percent'))}"
        + (f", GPU {_pct(usage.get('gpu_percent'))}" if gpus else ""),
        "  Tasks      " + (", ".join(f"{n} {state}" for state, n in sorted(tasks.items())) or "none"),
        f"  Earnings   today {earn.get('today', 0)}, total {earn.get('total', 0)}"
        + (f" (last report {earn['last_reward']})" if earn.get("last_reward") is not None else ""),
        f"  Monitor    {ls.url}/monitor.html",
    ]
