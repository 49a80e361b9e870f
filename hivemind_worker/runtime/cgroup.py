"""A container's cgroup, found from its init pid and read straight from the files.

``find(pid, container_id)`` locates the directories once: ``/proc/<pid>/cgroup`` names
the container's cgroup whatever the engine's driver (cgroupfs ``/docker/<id>``,
systemd ``/system.slice/docker-<id>.scope``, a private engine's own parent), taken
only if it carries the container's id; else (pid unknown, or seen from another pid
namespace) it is looked for under the two usual names. ``read()`` is
then a few small file reads and no engine call: cheap enough to run every second.

Cgroup v2 (``cpu.stat`` usage_usec, ``memory.current``, ``memory.peak`` where the
kernel has it, 5.19+) and v1 (``cpuacct.usage``, ``memory.usage_in_bytes``,
``memory.max_usage_in_bytes``). Memory is what the kernel charges the container (page
cache included): the figure its limit is enforced against.

Blocking file reads: call from a worker thread. A file that cannot be read gives a
field of None; a cgroup that is gone (the container exited) gives None.

telemetry/containers.py has its own reader of the same files: the layering rules
(tests/unit/core/test_layering.py) keep telemetry from importing the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
_V1_MOUNTS = {"cpuacct": ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"), "memory": ("memory",)}


@dataclass(frozen=True)
class CgroupDirs:
    cpu: Path  # v2: the one directory; v1: the cpuacct hierarchy's
    memory: Path | None
    v2: bool


@dataclass(frozen=True)
class CgroupSample:
    cpu_usec: int  # cumulative CPU time of every process in the cgroup
    memory_bytes: int | None
    memory_peak_bytes: int | None  # the kernel's own high-water mark, where it keeps one


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def find(pid: int, container_id: str = "", root: Path = ROOT, proc: Path = PROC) -> CgroupDirs | None:
    """The container's cgroup directories, or None (gone, or not where we look).
    PermissionError / OSError propagate: the caller degrades and says so once."""
    v2 = (root / "cgroup.controllers").exists()
    paths: dict[str, str] = {}  # controller ("" for v2) -> path inside its hierarchy
    text = _read(proc / str(pid) / "cgroup") if pid > 0 else None
    for line in (text or "").splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            # Never the root cgroup (the whole host); and only the container's own: a pid from
            # an engine in another pid namespace may name some other process here.
            if path.strip().strip("/") and (not container_id or container_id in path):
                paths[name] = path.strip()
    if v2:
        cands = [paths[""]] if "" in paths else []
        cands += [f"/system.slice/docker-{container_id}.scope", f"/docker/{container_id}"] if container_id else []
        d = next((root / c.lstrip("/") for c in cands if (root / c.lstrip("/")).is_dir()), None)
        return CgroupDirs(d, d, True) if d is not None else None
    cpu = _v1_dir(root, "cpuacct", paths.get("cpuacct"), container_id, "cpuacct.usage")
    if cpu is None:
        return None
    return CgroupDirs(cpu, _v1_dir(root, "memory", paths.get("memory"), container_id, "memory.usage_in_bytes"), False)


def _v1_dir(root: Path, controller: str, path: str | None, container_id: str, probe: str) -> Path | None:
    cands = [path] if path else []
    cands += [f"/docker/{container_id}", f"/system.slice/docker-{container_id}.scope"] if container_id else []
    for mount in _V1_MOUNTS[controller]:
        for rel in cands:
            d = root / mount / rel.lstrip("/")
            if (d / probe).exists():
                return d
    return None


def read(dirs: CgroupDirs) -> CgroupSample | None:
    """One sample; None once the cgroup is gone."""
    if dirs.v2:
        cpu = None
        for line in (_read(dirs.cpu / "cpu.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu = int(value)
        if cpu is None:
            return None
        return CgroupSample(cpu, _int(dirs.cpu / "memory.current"), _int(dirs.cpu / "memory.peak"))
    ns = _int(dirs.cpu / "cpuacct.usage")
    if ns is None:
        return None
    mem = dirs.memory
    return CgroupSample(ns // 1000, _int(mem / "memory.usage_in_bytes") if mem else None,
                        _int(mem / "memory.max_usage_in_bytes") if mem else None)
