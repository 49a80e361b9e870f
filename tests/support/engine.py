"""A PRIVATE Docker engine for fault tests: restart it, stop it, give it live-restore,
without touching the shared dockerd that every other test uses.

    with Engine(live_restore=False) as engine:     # or Engine(...).start() / .stop()
        engine.load_image("hivemind-task-runtime:local")   # from the shared engine
        os.environ["DOCKER_HOST"] = engine.host           # or engine.env() for a subprocess
        ...
        engine.restart()          # SIGTERM, wait for the exit, start again (same state)
        engine.stop(); engine.start()                      # the same, with a gap you control
        engine.client()           # a docker.DockerClient for this engine (close it)

    Engine(n=None, live_restore=False, config=None, root=Path("/run"), data_parent=Path("/var/lib"))
        n            a unique number (default: the first free one); the socket is
                     unix:///run/hm-engine-<n>/docker.sock
        live_restore adds --live-restore (containers keep running across restart())
        config       a dict written as daemon.json and passed with --config-file
    engine.host  "unix:///run/hm-engine-<n>/docker.sock";  engine.log  its dockerd log

The engine runs with its own --data-root (a tmpfs), --exec-root, --pidfile, its own supervised
containerd, and --iptables=false --bridge=none: it creates no network, so task
containers on it must use network "none". It runs in a network namespace of its own
(hm-engine-<n>): a dockerd started with --bridge=none deletes any docker0 it sees,
and the shared engine's docker0 must survive. stop() (also at exit of the with block)
removes every container, stops dockerd and its containerd, unmounts what is left
and deletes the data root. Needs root.

load_image() copies an image from the shared engine through a tar cached under
/var/cache/hivemind-worker/ (keyed by the image id, so a rebuilt image refreshes it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CACHE = Path("/var/cache/hivemind-worker")
START_TIMEOUT_S = 60.0
DATA_ROOT_SIZE = "2g"  # tmpfs: the task image (~150 MB) and the containers' writable layers
STOP_TIMEOUT_S = 60.0  # dockerd stops each container with its 10 s grace first


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Engine:
    def __init__(self, n: int | None = None, live_restore: bool = False, config: dict | None = None,
                 root: Path = Path("/run"), data_parent: Path = Path("/var/lib")) -> None:
        if n is None:
            n = next(i for i in range(1, 1000) if not (root / f"hm-engine-{i}").exists())
        self.n = n
        self.run_dir = root / f"hm-engine-{n}"
        self.run_dir.mkdir(parents=True, exist_ok=False)  # claims the number
        self.data_root = data_parent / f"hm-engine-{n}"
        self.exec_root = self.run_dir / "exec"
        self.socket = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "docker.pid"
        self.log = self.run_dir / "dockerd.log"
        self.host = f"unix://{self.socket}"
        self.live_restore = live_restore
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.netns = f"hm-engine-{n}"

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Engine":
        if not os.path.ismount(self.data_root):
            # On a tmpfs: loading the image is quick and deleting it is an unmount
            # (an rm -rf of overlay2 layers on a busy disk takes seconds).
            self.data_root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DATA_ROOT_SIZE}", "tmpfs", str(self.data_root)],
                           check=True, timeout=30)
        if not Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, timeout=30)
        args = [
            # nsenter, not `ip netns exec`: that would also give dockerd a mount namespace
            # of its own, and the tests bind host paths (workspaces, tmpfs) into tasks.
            "nsenter", f"--net=/run/netns/{self.netns}", "--", "dockerd", "--host", self.host, "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root), "--pidfile", str(self.pidfile),
            "--iptables=false", "--ip-masq=false", "--bridge=none", "--log-level=info",
        ]
        if self.live_restore:
            args.append("--live-restore")
        # Always a file of our own: /etc/docker/daemon.json is the shared engine's.
        cfg = self.run_dir / "daemon.json"
        cfg.write_text(json.dumps(self.config or {}))
        args += ["--config-file", str(cfg)]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private dockerd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            if self._answers():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"private dockerd did not answer within {START_TIMEOUT_S:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self, remove_containers: bool = False) -> None:
        """SIGTERM dockerd and wait for it to exit (containers are stopped by it
        unless live-restore is on, or removed first with remove_containers)."""
        if self.proc is None:
            return
        if remove_containers and self.proc.poll() is None:
            self.docker("rm", "-f", *self.docker("ps", "-aq").split(), check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop dockerd as `systemctl restart docker` does (SIGTERM), then start it again."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop everything this engine started and delete its state."""
        try:
            if self.proc is None and self.live_restore and self.run_dir.exists():
                self.start()  # containers a live-restore stop left running: let dockerd remove them
            self.stop(remove_containers=True)
        except Exception:
            pass
        self._kill_containerd()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
        self._unmount_below(self.data_root, self.exec_root)  # the tmpfs data root too
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- use ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host)

    def load_image(self, image: str) -> None:
        """Copy ``image`` from the shared engine into this one (tar cached on disk)."""
        image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], check=True,
                                  capture_output=True, text=True, timeout=60).stdout.strip()
        CACHE.mkdir(parents=True, exist_ok=True)
        tar = CACHE / f"image-{image_id.split(':')[-1][:16]}.tar"
        if not tar.exists():
            part = tar.with_suffix(f".part{os.getpid()}")
            subprocess.run(["docker", "save", "-o", str(part), image], check=True, timeout=300)
            part.rename(tar)
        self.docker("load", "-i", str(tar), timeout=300)

    # -- cleanup helpers ------------------------------------------------------------
    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        return subprocess.run(["docker", "-H", self.host, "version"], capture_output=True, timeout=20).returncode == 0

    def _kill_containerd(self) -> None:
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _unmount_below(*roots: Path) -> None:
        with open("/proc/self/mounts") as fh:
            points = [line.split()[1].replace("\\040", " ") for line in fh]
        prefixes = tuple(f"{r}/" for r in roots)
        mine = [p for p in points if p.startswith(prefixes) or p in {str(r) for r in roots}]
        for point in sorted(mine, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
