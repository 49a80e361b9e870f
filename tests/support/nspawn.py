"""Boot a real systemd in a Debian root file system under systemd-nspawn, for
system tests (host integration, packaging, Ansible).

    tarball = ensure_rootfs()                       # cached under /var/cache/hivemind-worker-tests
    with Machine.from_tarball(tarball, tmp_path) as m:   # a private copy
        m.boot(binds=[(Path("/var/run/docker.sock"), "/run/docker.sock")])
        m.exec("systemctl", "start", "foo")          # CompletedProcess; check=True by default
        m.wait_active("foo.service")
        m.journal("foo.service")                     # list of dicts (journalctl -o json)
    # leaving the block powers it off and deletes the copy

The host's PID 1 need not be systemd: machines are started with
``--register=no --keep-unit`` and entered with nsenter (see TESTING.md). Each
machine shares the host's network, so give its services free ports. This module
never touches anything but its own copies and processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HIVEMIND_TEST_CACHE", "/var/cache/hivemind-worker-tests"))
ROOTFS_TARBALL = CACHE / "rootfs" / "bookworm-systemd-v1.tar"
BUILD_SCRIPT = REPO / "scripts" / "build-test-rootfs.sh"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]


def unavailable() -> str | None:
    """Why machines cannot be booted here (a pytest skip reason), or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    for tool in ("systemd-nspawn", "nsenter", "tar"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install systemd-container util-linux tar)"
    if not ROOTFS_TARBALL.exists() and shutil.which("debootstrap") is None:
        return "needs debootstrap to build the test root file system"
    return None


def ensure_rootfs(tarball: Path = ROOTFS_TARBALL, extra_packages: str = "", timeout_s: float = 900) -> Path:
    """The cached root file system tarball, built on first use (~90 s, needs the
    Debian mirror). A lock keeps parallel test processes from building it twice."""
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with open(tarball.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            args = [str(BUILD_SCRIPT), str(tarball)] + ([extra_packages] if extra_packages else [])
            subprocess.run(args, check=True, timeout=timeout_s)
    return tarball


class MachineError(AssertionError):
    """A machine did not do what the test needed (carries the evidence)."""


class Machine:
    def __init__(self, root: Path, name: str | None = None) -> None:
        self.root = root
        self.name = name or f"hmt-{uuid.uuid4().hex[:8]}"
        self.leader: int | None = None
        self._proc: subprocess.Popen | None = None
        self.console = root.parent / f"{self.name}.console.log"

    @classmethod
    def from_tarball(cls, tarball: Path, workdir: Path, name: str | None = None) -> "Machine":
        """A private copy of the root file system under ``workdir`` (~3 s)."""
        name = name or f"hmt-{uuid.uuid4().hex[:8]}"
        root = workdir / name
        root.mkdir(parents=True)
        subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], check=True, timeout=300)
        return cls(root, name)

    # ------------------------------------------------------------------ lifecycle

    def boot(self, binds: Sequence[tuple[Path, str]] = (), ro_binds: Sequence[tuple[Path, str]] = (),
             timeout_s: float = 60) -> None:
        """Boot systemd and wait until it finished starting up."""
        args = ["systemd-nspawn", "-q", "-b", "-D", str(self.root), f"--machine={self.name}",
                "--register=no", "--keep-unit"]
        args += [f"--bind={src}:{dst}" for src, dst in binds]
        args += [f"--bind-ro={src}:{dst}" for src, dst in ro_binds]
        with open(self.console, "wb") as console:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while self.leader is None or not Path(f"/proc/{self.leader}/root/run/systemd/private").exists():
            if self._proc.poll() is not None:
                raise MachineError(f"systemd-nspawn exited {self._proc.returncode}:\n{self.console.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise MachineError(f"{self.name} did not boot in {timeout_s}s:\n{self.console.read_text()[-3000:]}")
            self.leader = self.leader or self._find_leader()
            time.sleep(0.1)
        left = max(5.0, deadline - time.monotonic())
        self.exec("systemctl", "is-system-running", "--wait", check=False, timeout=left)

    def _find_leader(self) -> int | None:
        """The container's PID 1 as seen from the host: a descendant of nspawn whose
        innermost PID is 1 (the first child can be a short-lived helper)."""
        assert self._proc is not None
        todo, seen = [self._proc.pid], set()
        while todo:
            pid = todo.pop()
            seen.add(pid)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if pid != self._proc.pid and len(nspid) > 1 and nspid[-1] == "1":
                return pid
            todo += [int(c) for c in children if int(c) not in seen]
        return None

    def poweroff(self, timeout_s: float = 30) -> None:
        """Clean shutdown (SIGRTMIN+4 to the container's systemd); killed if it hangs."""
        if self._proc is None or self._proc.poll() is not None:
            return
        if self.leader:
            try:
                os.kill(self.leader, signal.SIGRTMIN + 4)
            except ProcessLookupError:
                pass
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.console.unlink(missing_ok=True)

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.poweroff()
        self.remove()

    # ------------------------------------------------------------------ inside

    def exec(self, *cmd: str, check: bool = True, timeout: float = 120, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the booted machine (all its namespaces, clean env)."""
        if self.leader is None:
            raise MachineError(f"{self.name} is not booted")
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--",
                "/usr/bin/env", "-i", *ENV, *extra, *cmd]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise MachineError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    def show(self, unit: str, prop: str) -> str:
        return self.exec("systemctl", "show", "-P", prop, unit, check=False).stdout.strip()

    def wait_active(self, unit: str, timeout_s: float = 30) -> None:
        """Until ``unit`` is active; MachineError with its status and journal if it fails."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.exec("systemctl", "is-active", unit, check=False).stdout.strip()
            if state == "active":
                return
            if state == "failed" or time.monotonic() > deadline:
                status = self.exec("systemctl", "status", "--no-pager", "-l", unit, check=False).stdout
                log = self.exec("journalctl", "-u", unit, "--no-pager", "-n", "60", check=False).stdout
                raise MachineError(f"{unit} is {state}, not active:\n{status}\n{log}")
            time.sleep(0.2)

    def wait_for(self, predicate, timeout_s: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise MachineError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.2)

    def journal(self, unit: str) -> list[dict]:
        """The unit's journal as ``journalctl -o json`` objects."""
        out = self.exec("journalctl", "-u", unit, "-o", "json", "--no-pager", check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the machine's file system (from the host side)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
