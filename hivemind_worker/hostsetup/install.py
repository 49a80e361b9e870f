"""`hivemind-worker install [--uninstall] [--purge]`: make a host ready to run the
worker, idempotently.

Creates the service user (member of ``docker``, creating that group if missing),
the config directory (root's, readable by the service group: the daemon only
reads it, and root-run commands trust it; the WireGuard key and wg0.conf are
root's alone) and the state directory (the service user's), writes the unit rendered for the executable that is running now,
and enables it when systemd is PID 1. ``uninstall`` reverses that but keeps the
node's identity and state; ``purge`` deletes them and the user too.

Runs as root. Never prints: returns an ``InstallReport`` of what it did.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import shutil
import stat
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
# Files in the config directory only root reads; the rest are root's, group-readable.
PRIVATE_FILES = ("wireguard.key",)


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


def _open_nofollow(path: Path, name: str | None = None, dir_fd: int | None = None, directory: bool = False) -> int:
    """An fd for ``path`` (or ``name`` in ``dir_fd``) that is never a symlink's target:
    chown/chmod go through it, so a link planted by the service user cannot make
    root change some other file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        return os.open(name if name is not None else path, flags, dir_fd=dir_fd)
    except OSError as exc:
        # O_DIRECTORY on a link to a directory fails with ENOTDIR, not ELOOP.
        is_link = exc.errno == errno.ELOOP or (
            exc.errno == errno.ENOTDIR and stat.S_ISLNK(os.lstat(name if name is not None else path, dir_fd=dir_fd).st_mode))
        if is_link:
            raise HostError(f"{path} is a symbolic link; install changes owners and modes only of real files: "
                            f"remove the link (rm {path}), put the real {'directory' if directory else 'file'} "
                            "there, and run install again") from exc
        if exc.errno == errno.ENOTDIR:
            raise HostError(f"{path} is not a directory; move it away and run install again") from exc
        raise HostError(f"cannot open {path}: {exc}") from exc


def _set(fd: int, uid: int, gid: int, mode: int) -> bool:
    """Owner and mode through the fd; True when something changed."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode):
        return False
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    return True


def _ensure_dir(path: Path, uid: int, gid: int, mode: int, report: InstallReport) -> None:
    existed = path.is_dir() or path.is_symlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a dangling link or a file: the open below says which
    fd = _open_nofollow(path, directory=True)
    try:
        _set(fd, uid, gid, mode)
    finally:
        os.close(fd)
    owner = f"{pwd.getpwuid(uid).pw_name}:{grp.getgrgid(gid).gr_name}"
    report.add(f"{'kept' if existed else 'created'} {path} ({owner} {mode:04o})")


def _file_mode(name: str) -> tuple[bool, int]:
    """(shared with the service group, mode) of a file in the config directory."""
    return (False, 0o600) if name in PRIVATE_FILES or name.endswith(".conf") else (True, 0o640)


def secure_file(path: Path, group_gid: int | None, dir_fd: int | None = None) -> bool:
    """Root owns ``path``; the service group may read it unless it is root's alone
    (the WireGuard key, wg0.conf). Refuses a symlink; leaves non-regular files alone.
    True when owner or mode changed."""
    shared, mode = _file_mode(path.name)
    fd = _open_nofollow(path, path.name if dir_fd is not None else None, dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if not shared or group_gid is None:
            return _set(fd, 0, 0, 0o600)
        return _set(fd, 0, group_gid, mode)
    finally:
        os.close(fd)


def secure_config_dir(config_dir: Path, gid: int, report: InstallReport) -> None:
    """The config directory and everything in it root's: the daemon only reads there,
    and root-run commands (enroll, up) trust what they find there."""
    group = grp.getgrgid(gid).gr_name
    _ensure_dir(config_dir, 0, gid, 0o750, report)
    dir_fd = _open_nofollow(config_dir, directory=True)
    try:
        for name in sorted(os.listdir(dir_fd)):
            path = config_dir / name
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                report.add(f"left {path} alone (a directory)")
                continue
            if secure_file(path, gid, dir_fd=dir_fd):
                shared, _ = _file_mode(name)
                report.add(f"made {path} root's ({f'root:{group} 0640' if shared else 'root:root 0600'})")
    finally:
        os.close(dir_fd)


def share_with_service(paths: Iterable[Path], user: str = DEFAULT_USER) -> None:
    """After enrollment: root keeps the files, the service group may read those the
    daemon needs (node.json, the master's CA). A no-op when not root; without the
    service user (a dev box) the files stay root's, 0600."""
    if os.geteuid() != 0:
        return
    try:
        gid: int | None = pwd.getpwnam(user).pw_gid
    except KeyError:
        gid = None
    for path in paths:
        try:
            secure_file(path, gid)
        except HostError as exc:
            raise HostError(f"{exc} (while giving {user} read access after enrollment)") from exc


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
    pw = pwd.getpwnam(user)
    secure_config_dir(settings.config_dir, pw.pw_gid, report)
    _ensure_dir(settings.state_dir, pw.pw_uid, pw.pw_gid, 0o750, report)  # the daemon's to write

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
