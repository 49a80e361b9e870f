"""`hivemind-worker install [--uninstall] [--purge]`: make a host ready to run the
worker, idempotently.

Creates the service user (member of ``docker``, creating that group if missing),
the config directory (0750, the service user's; secrets inside are 0600) and the
state directory, writes the unit rendered for the executable that is running now,
and enables it when systemd is PID 1. ``uninstall`` reverses that but keeps the
node's identity and state; ``purge`` deletes them and the user too.

Runs as root. Never prints: returns an ``InstallReport`` of what it did.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from hivemind_worker.config import Settings
from hivemind_worker.errors import HostError
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.systemd.unit import DEFAULT_USER, UNIT_NAME, render_unit

logger = logging.getLogger(__name__)

UNIT_DIR = Path("/etc/systemd/system")
# Where a distribution package puts the unit; when it is there, the package owns it.
PACKAGED_UNITS = (Path("/usr/lib/systemd/system") / UNIT_NAME, Path("/lib/systemd/system") / UNIT_NAME)
DOCKER_GROUP = "docker"


@dataclass
class InstallReport:
    steps: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        logger.info("%s", text)
        self.steps.append(text)


def systemd_booted() -> bool:
    """True when systemd is PID 1 (sd_booted(3))."""
    return Path("/run/systemd/system").is_dir()


def worker_executable() -> Path:
    """The `hivemind-worker` executable of the installation that is running now."""
    beside = Path(sys.executable).parent / "hivemind-worker"  # a venv's bin/
    if beside.exists():
        return beside
    found = shutil.which("hivemind-worker")
    if found:
        return Path(found)
    raise HostError("cannot find the hivemind-worker executable; install the package (pip install .) first")


def _run(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"{cmd[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise HostError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _need_root() -> None:
    if os.geteuid() != 0:
        raise HostError("install needs root: run it with sudo")


def _ensure_group(name: str, report: InstallReport) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        _run("groupadd", "--system", name)
        report.add(f"created group {name}")


def _ensure_user(user: str, home: Path, report: InstallReport) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false")
        _run(
            "useradd", "--system", "--user-group", "--no-create-home",
            "--home-dir", str(home), "--shell", nologin, "--groups", DOCKER_GROUP, user,
        )
        report.add(f"created system user {user} (groups: {user}, {DOCKER_GROUP})")
        return
    if user not in grp.getgrnam(DOCKER_GROUP).gr_mem:
        _run("usermod", "--append", "--groups", DOCKER_GROUP, user)
        report.add(f"added {user} to group {DOCKER_GROUP}")
    else:
        report.add(f"user {user} exists and is in group {DOCKER_GROUP}")


def _ensure_dir(path: Path, user: str, mode: int, report: InstallReport) -> None:
    pw = pwd.getpwnam(user)
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)
    report.add(f"{'kept' if existed else 'created'} {path} ({user}:{user} {mode:04o})")


def chown_to_service_user(paths: Iterable[Path], user: str = DEFAULT_USER) -> None:
    """Give files made by root (e.g. during enrollment) to the service user, keeping
    their modes. A no-op when not root or when the user does not exist (a dev box)."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return
    for path in paths:
        try:
            os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise HostError(f"cannot give {path} to {user}: {exc}; run: sudo chown {user}: {path}") from exc


def _packaged_unit() -> Path | None:
    return next((p for p in PACKAGED_UNITS if p.exists()), None)


def install(
    settings: Settings,
    user: str = DEFAULT_USER,
    enable: bool = True,
    exec_path: Path | None = None,
    unit_dir: Path = UNIT_DIR,
) -> InstallReport:
    """Make the host ready; safe to run again (it converges, reporting what it kept)."""
    _need_root()
    report = InstallReport()
    _ensure_group(DOCKER_GROUP, report)
    _ensure_user(user, settings.state_dir, report)
    _ensure_dir(settings.config_dir, user, 0o750, report)
    _ensure_dir(settings.state_dir, user, 0o750, report)
    owned = [p for p in settings.config_dir.iterdir() if p.is_file()]
    chown_to_service_user(owned, user)
    for path in owned:
        if path.suffix in (".json", ".key", ".conf", ".pem") and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
            report.add(f"made {path} private (0600)")

    packaged = _packaged_unit()
    unit_path = unit_dir / UNIT_NAME
    if packaged is not None and unit_dir == UNIT_DIR:
        report.add(f"unit provided by the package at {packaged}; not writing {unit_path}")
    else:
        exe = exec_path or worker_executable()
        text = render_unit(exe, user, settings.drain_timeout_s, settings.config_dir, settings.state_dir)
        if unit_path.exists() and unit_path.read_text() == text:
            report.add(f"unit {unit_path} is up to date (ExecStart={exe} run)")
        else:
            atomic_write(unit_path, text, 0o644)
            report.add(f"wrote {unit_path} (ExecStart={exe} run)")

    if not systemd_booted():
        report.add("systemd is not running as PID 1 here: unit written but not enabled; "
                   "on a systemd host run: systemctl daemon-reload && systemctl enable hivemind-worker")
        return report
    _run("systemctl", "daemon-reload")
    if enable:
        _run("systemctl", "enable", UNIT_NAME)
        report.add(f"enabled {UNIT_NAME}")
    enrolled = (settings.config_dir / "node.json").exists()
    report.add(
        "node is enrolled: start it with: systemctl start hivemind-worker"
        if enrolled
        else "next: hivemind-worker enroll --master HOST:PORT --token TOKEN --ca-hash sha256:..., "
        "then systemctl start hivemind-worker"
    )
    return report


def uninstall(settings: Settings, user: str = DEFAULT_USER, purge: bool = False, unit_dir: Path = UNIT_DIR) -> InstallReport:
    """Stop and remove the unit. Keeps identity and state unless ``purge``."""
    _need_root()
    report = InstallReport()
    unit_path = unit_dir / UNIT_NAME
    if systemd_booted() and (unit_path.exists() or _packaged_unit()):
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], capture_output=True, timeout=180, check=False)
        report.add(f"stopped and disabled {UNIT_NAME}")
    if unit_path.exists():
        unit_path.unlink()
        report.add(f"removed {unit_path}")
        if systemd_booted():
            _run("systemctl", "daemon-reload")
    if not purge:
        report.add(f"kept {settings.config_dir} (node identity) and {settings.state_dir}; --purge deletes them")
        return report
    for path in (settings.config_dir, settings.state_dir):
        if path.exists():
            shutil.rmtree(path)
            report.add(f"deleted {path}")
    try:
        pwd.getpwnam(user)
    except KeyError:
        pass
    else:
        _run("userdel", user)
        report.add(f"deleted user {user}")
    return report
