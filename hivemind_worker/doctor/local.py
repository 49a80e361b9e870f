"""Doctor checks of the host itself: settings, enrollment, private files, disk,
the systemd unit and the monitor port. Read-only."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, GiB, failed, passed, warned
from hivemind_worker.errors import WorkerError
from hivemind_worker.identity import identity_path, load_identity, usage_key_path, wg_key_path
from hivemind_worker.systemd.unit import UNIT_NAME

ENROLL_FIX = "hivemind-worker enroll --master HOST:PORT --token TOKEN --ca-hash sha256:..."


def check_config(ctx: DoctorContext) -> list[CheckResult]:
    name = "config"
    if ctx.config_error:
        return [failed(name, ctx.config_error + " (checked the rest with defaults)",
                       f"edit {ctx.settings.config_file} (or the variable/flag named above)")]
    where = ctx.settings.config_file if ctx.settings.config_file.exists() else "defaults (no worker.toml)"
    return [passed(name, f"settings valid ({where})")]


def check_enrolled(ctx: DoctorContext) -> list[CheckResult]:
    name = "enrolled"
    try:
        identity = load_identity(ctx.settings.config_dir)
    except WorkerError as exc:
        if "permission denied" in str(exc):
            return [failed(name, str(exc), "run the doctor as root: sudo hivemind-worker doctor")]
        return [failed(name, str(exc), ENROLL_FIX)]
    return [passed(name, f"node {identity.node_id} enrolled with {identity.master}")]


def check_credentials(ctx: DoctorContext) -> list[CheckResult]:
    """Secrets 0600 and readable by the service user (it runs the daemon)."""
    name = "credential files"
    cfg = ctx.settings.config_dir
    files = [p for p in (identity_path(cfg), wg_key_path(cfg), usage_key_path(cfg), ctx.settings.wg_config) if p.exists()]
    if not files:
        return [warned(name, f"no credential files in {cfg} yet", ENROLL_FIX)]
    try:
        owner = pwd.getpwnam(ctx.user)
    except KeyError:
        owner = None
    for path in files:
        st = path.stat()
        mode = st.st_mode & 0o777
        # Root's and readable by the service group only (hostsetup's model), or legacy 0600.
        shared = owner is not None and st.st_uid == 0 and st.st_gid == owner.pw_gid and not mode & 0o037
        if mode & 0o077 and not shared:
            return [failed(name, f"{path} is mode {mode:04o}: others can read a secret", f"chmod 600 {path}")]
        if owner is not None and path == identity_path(cfg) and st.st_uid != owner.pw_uid and not shared:
            return [failed(name, f"{path} is not readable by {ctx.user}: the daemon cannot read it",
                           "sudo hivemind-worker install (root owns it, the service group reads it)")]
    return [passed(name, ", ".join(p.name for p in files) + " are private (root's or the service's)")]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(ctx: DoctorContext) -> list[CheckResult]:
    name = "disk space"
    places = {"workspaces": ctx.settings.state_dir}
    if ctx.docker_root.exists():
        places["images"] = ctx.docker_root
    notes, warn = [], None
    for what, path in places.items():
        usage = shutil.disk_usage(_nearest_existing(path))
        used_pct = 100 * usage.used / usage.total if usage.total else 100.0
        notes.append(f"{what} {usage.free / GiB:.1f} GiB free ({path})")
        if usage.free < ctx.min_free_bytes:
            return [failed(name, f"only {usage.free / GiB:.1f} GiB free for {what} at {path} "
                                 f"(need {ctx.min_free_bytes / GiB:.0f} GiB)",
                           "free space: docker system prune, or move the state/Docker directory to a larger disk")]
        if usage.free < ctx.warn_free_bytes or used_pct >= ctx.settings.disk_high_watermark_percent:
            warn = f"{what} at {path} is {used_pct:.0f}% full ({usage.free / GiB:.1f} GiB free)"
    if warn:
        return [warned(name, warn, "free space: docker system prune")]
    return [passed(name, "; ".join(notes))]


def check_unit(ctx: DoctorContext) -> list[CheckResult]:
    name = "systemd unit"
    unit = next((d / UNIT_NAME for d in ctx.unit_dirs if (d / UNIT_NAME).exists()), None)
    if unit is None:
        return [failed(name, f"{UNIT_NAME} is not installed", "sudo hivemind-worker install")]
    if not Path("/run/systemd/system").is_dir():
        return [warned(name, f"installed at {unit}, but systemd is not PID 1 here, so it cannot run",
                       "run the worker on a host booted with systemd, or `hivemind-worker run` by hand")]
    state = subprocess.run(["systemctl", "is-active", UNIT_NAME], capture_output=True, text=True,
                           timeout=ctx.timeout_s).stdout.strip()
    if state == "active":
        return [passed(name, f"{UNIT_NAME} installed ({unit}) and active")]
    return [failed(name, f"{UNIT_NAME} installed ({unit}) but {state or 'unknown'}",
                   "sudo systemctl start hivemind-worker; see: journalctl -u hivemind-worker")]


def _listener_pid(port: int) -> int | None:
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except psutil.AccessDenied:
        return None
    return None


def check_monitor_port(ctx: DoctorContext) -> list[CheckResult]:
    name = "monitor port"
    s = ctx.settings
    if not s.monitor_enabled:
        return [passed(name, "monitor disabled (monitor_enabled = false)")]
    where = f"{s.monitor_host}:{s.monitor_port}"
    family = socket.AF_INET6 if ":" in s.monitor_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.monitor_host, s.monitor_port))
            return [passed(name, f"{where} is free")]
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return [failed(name, f"cannot bind {where}: {exc.strerror}",
                               "set monitor_host/monitor_port in worker.toml")]
    pid = _listener_pid(s.monitor_port)
    if pid is not None:
        try:
            cmdline = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")).decode(errors="replace")
        except OSError:
            cmdline = ""
        if "hivemind" in cmdline:
            return [passed(name, f"{where} is served by hivemind-worker (pid {pid})")]
        program = cmdline.split(" ", 1)[0] or "another program"
        return [failed(name, f"{where} is taken by {os.path.basename(program)} (pid {pid})",
                       "stop that program, or set monitor_port in worker.toml")]
    return [failed(name, f"{where} is taken by another program",
                   "find it with: ss -ltnp; stop it, or set monitor_port in worker.toml")]


CONFIG = Check(("config",), check_config, "report a bug: reading the config hung")
ENROLLED = Check(("enrolled",), check_enrolled, f"check {'/etc/hivemind-worker'} is on a local disk")
CREDENTIALS = Check(("credential files",), check_credentials, "check the config directory's disk")
DISK = Check(("disk space",), check_disk, "check the state directory's disk (a hung network mount?)")
UNIT = Check(("systemd unit",), check_unit, "systemctl does not answer: check systemd (systemctl status)")
MONITOR_PORT = Check(("monitor port",), check_monitor_port, "report a bug: checking the port hung")
