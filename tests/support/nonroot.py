"""A Python that another uid can run with this project importable, wherever the
checkout, its venv and the interpreter live.

The non-root agent tests start the agent as a service uid. A CI machine may clone
into a 0700 directory (mktemp -d), and pyenv puts the interpreter under root's 0700
home: that uid can then reach neither. Whatever it cannot reach is bind-mounted,
read-only, under a fresh 0755 directory, and the agent runs from there. Everything
is unmounted on the way out, also when the test fails.
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
# What the agent scripts import: the project, its dependencies, and tests.support.
PROBE = "import docker, psutil, hivemind_worker.tasks.manager, tests.support.localhost"


@dataclass
class AgentPython:
    """How to start a script as `uid`: its interpreter, environment and view of paths."""

    uid: int
    python: str
    env: dict[str, str]
    user: dict  # subprocess.run's user, group and extra_groups (docker)
    base: Path  # the fresh 0755 directory: the mounts' parent, and a cwd the uid may enter
    mounts: list[tuple[Path, Path]]  # (source, where the uid sees it)

    def path(self, path: Path) -> str:
        """Where the uid sees `path` (inside the most specific mount that holds it)."""
        path = Path(path).resolve()
        holders = [(src, dst) for src, dst in self.mounts if path.is_relative_to(src)]
        if not holders:
            return str(path)
        src, dst = max(holders, key=lambda m: len(m[0].parts))
        return str(dst / path.relative_to(src))

    def run(self, script: Path, *args: str, home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.python, self.path(script), *args], env={**self.env, "HOME": str(home)},
                              cwd=self.base, capture_output=True, text=True, timeout=timeout, **self.user)


@contextmanager
def agent_python(uid: int) -> Iterator[AgentPython]:
    """Yield an AgentPython for `uid` (in the docker group); skip, saying why, if none works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start the agent as another user")
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        pytest.skip("needs a docker group (the service user's way to the Docker socket)")
    base = Path(tempfile.mkdtemp(prefix="hivemind-nonroot-py-"))
    base.chmod(0o755)
    agent = AgentPython(uid, "", {}, {"user": uid, "group": uid, "extra_groups": [docker_gid]}, base, [])
    try:
        _find_python(agent)
        yield agent
    finally:
        _unmount(agent.mounts)
        base.rmdir()  # never rmtree: a mount that would not go leaves the source behind it


def _find_python(agent: AgentPython) -> None:
    """Try the test's own interpreter first (the venv's packages were built for it), then the system's."""
    sites = dict.fromkeys(Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib"))
    pythonpath = {p: _reachable(agent, p) for p in (REPO, *sites)}
    if closed := [str(p) for p, seen in pythonpath.items() if seen is None]:
        pytest.skip(f"no Python that uid {agent.uid} can run with this project importable: it cannot read "
                    f"{', '.join(closed)}, not even through a bind mount (give the directory o+rx)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(seen for seen in pythonpath.values() if seen)}
    candidates = [(SYSTEM_PYTHON, env)]
    real = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix).resolve()
    if real.is_relative_to(prefix) and (seen := _reachable(agent, prefix)):
        # A pyenv build finds libpython through an absolute RUNPATH into its old prefix.
        lib = {"LD_LIBRARY_PATH": f"{seen}/lib"} if Path(seen) != prefix else {}
        candidates.insert(0, (Path(seen) / real.relative_to(prefix), {**env, **lib}))
    tried = []
    for python, candidate_env in candidates:
        try:
            probe = subprocess.run([str(python), "-c", PROBE], env=candidate_env, cwd=agent.base,
                                   capture_output=True, text=True, timeout=60, **agent.user)
        except OSError as exc:  # not executable by that user
            tried.append(f"{python}: {exc}")
            continue
        if probe.returncode == 0:
            agent.python, agent.env = str(python), candidate_env
            return
        tried.append(f"{python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.skip(f"no Python that uid {agent.uid} can run with this project importable ({'; '.join(tried)})")


def _reachable(agent: AgentPython, path: Path) -> str | None:
    """Where the uid can read `path`: as it is, inside an earlier mount, or through a new
    read-only bind mount of it; None if it cannot be mounted (no CAP_SYS_ADMIN) or its
    own mode shuts the uid out (a mount does not change that)."""
    seen = agent.path(path)
    if _can_read(agent, seen):
        return seen
    target = agent.base / f"{len(agent.mounts)}-{path.name}"
    target.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(target)], capture_output=True)
    if done.returncode != 0:
        target.rmdir()
        return None
    agent.mounts.append((path, target))
    return str(target) if _can_read(agent, str(target)) else None


def _can_read(agent: AgentPython, path: str) -> bool:
    # test(1) as that uid: fails too when a directory above `path` is closed to it.
    return subprocess.run(["test", "-r", path, "-a", "-x", path], env={"PATH": "/usr/bin:/bin"},
                          **agent.user).returncode == 0


def _unmount(mounts: list[tuple[Path, Path]]) -> None:
    for _src, target in reversed(mounts):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=True)  # still busy: detach it now
        target.rmdir()
