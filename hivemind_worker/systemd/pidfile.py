"""The daemon's pid file, and signalling the daemon it names (`hivemind-worker drain`).

The pid file lives in the state directory, which the service user owns: root must
not signal whatever pid it names. Before signalling, the process is checked to be
a running ``hivemind-worker ... run`` (its /proc cmdline and exe) owned by root, the
service user or the caller; the signal then goes through a pidfd opened before the
checks, so a pid reused in between is never hit.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
from pathlib import Path

from hivemind_worker.errors import HostError
from hivemind_worker.systemd.unit import DEFAULT_USER

PID_FILE = "hivemind-worker.pid"


def pid_path(state_dir: Path) -> Path:
    """Where the running daemon writes its pid, for `hivemind-worker drain`."""
    return state_dir / PID_FILE


def read_pid(path: Path) -> int:
    """The pid in ``path``; HostError when the file is missing, a link or not a pid."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise HostError(f"no running hivemind-worker daemon here ({path} is missing); "
                        "start it: systemctl start hivemind-worker") from exc
    except PermissionError as exc:
        raise HostError(f"not allowed to read {path}; run as root") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HostError(f"{path} is a symbolic link, not the daemon's pid file; remove it "
                            "and restart the daemon: systemctl restart hivemind-worker") from exc
        raise HostError(f"cannot read {path}: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        text = fh.read(32).decode("ascii", errors="replace").strip()
    if not text.isdigit() or not 1 < int(text) < 2**22 + 1:
        raise HostError(f"{path} does not hold a pid ({text[:20]!r}); restart the daemon: "
                        "systemctl restart hivemind-worker")
    return int(text)


def _allowed_uids(user: str) -> set[int]:
    uids = {0, os.geteuid()}
    try:
        uids.add(pwd.getpwnam(user).pw_uid)
    except KeyError:
        pass
    return uids


def is_worker_daemon(argv: list[str]) -> bool:
    """True for ``.../hivemind-worker [opts] run`` and ``python -m hivemind_worker [opts] run``."""
    for i, arg in enumerate(argv[:3]):
        if os.path.basename(arg) == "hivemind-worker" or (arg == "-m" and argv[i + 1:i + 2] == ["hivemind_worker"]):
            return "run" in argv[i + 1:]
    return False


def check_daemon(pid: int, user: str = DEFAULT_USER) -> None:
    """HostError unless ``pid`` is a hivemind-worker daemon owned by root, ``user`` or us."""
    proc = Path("/proc") / str(pid)
    try:
        argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        uid = os.stat(proc).st_uid
        exe = os.path.basename(os.readlink(proc / "exe"))
    except FileNotFoundError as exc:
        raise HostError(f"no running hivemind-worker daemon here (pid {pid} from the pid file has ended); "
                        "start it: systemctl start hivemind-worker") from exc
    except PermissionError as exc:
        raise HostError(f"cannot inspect pid {pid} to check it is the daemon; run as root") from exc
    stale = ("; the pid file is stale or forged: restart the daemon (systemctl restart hivemind-worker)")
    if not is_worker_daemon(argv):
        raise HostError(f"pid {pid} is not a hivemind-worker daemon ({' '.join(argv)[:80]!r}){stale}")
    if not (exe.startswith("python") or exe == "hivemind-worker"):
        raise HostError(f"pid {pid} runs {exe!r}, not a Python hivemind-worker{stale}")
    if uid not in _allowed_uids(user):
        raise HostError(f"pid {pid} belongs to uid {uid}, neither root nor {user}{stale}")


def signal_daemon(state_dir: Path, draining: bool, user: str = DEFAULT_USER) -> int:
    """Ask the running daemon to drain (or resume); returns its pid."""
    path = pid_path(state_dir)
    pid = read_pid(path)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError as exc:
        raise HostError(f"no running hivemind-worker daemon here (pid {pid} in {path} has ended); "
                        "start it: systemctl start hivemind-worker") from exc
    try:
        check_daemon(pid, user)
        signal.pidfd_send_signal(pidfd, signal.SIGUSR1 if draining else signal.SIGUSR2)
    except ProcessLookupError as exc:
        raise HostError(f"the daemon (pid {pid}) ended before it could be signalled") from exc
    except PermissionError as exc:
        raise HostError(f"not allowed to signal the daemon (pid {pid}); run as root") from exc
    finally:
        os.close(pidfd)
    return pid
