"""Fakes of our own seams for the task manager's unit tests: an in-memory container
runtime with the DockerRuntime API (containers print scripted lines, exit, hang until
killed, or get OOM-killed) and a settable clock."""

from __future__ import annotations

import asyncio
import io
import itertools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.fsutil import sha256_file
from hivemind_worker.runtime.api import ContainerRuntime
from hivemind_worker.runtime.spec import ContainerInfo, ContainerSpec, ContainerStats, ExitInfo
from hivemind_worker.tasks.model import Clock, LogStream, Resources, TaskRequest


@dataclass
class Script:
    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    oom: bool = False
    hang: bool = False  # run until killed
    per_ms: int = 3  # lines stamped with the same millisecond


@dataclass
class FakeContainer:
    cid: str
    spec: ContainerSpec
    script: Script
    log: list[tuple[LogStream, str, int]] = field(default_factory=list)
    running: bool = False
    started: bool = False
    exit: ExitInfo | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    shares: list[int] = field(default_factory=list)


class FakeRuntime:
    def __init__(self) -> None:
        self.images = {"hivemind-task-runtime:local"}
        self.pulled: list[str] = []
        self.containers: dict[str, FakeContainer] = {}
        self.scripts: dict[str, Script] = {}
        self.removed: list[str] = []
        self.gc_calls = 0
        self.fail_waits = 0  # the next N wait() calls fail as if dockerd restarted
        self.usage: dict[str, ContainerStats] = {}  # task id -> what stats() reports while it runs
        self._ids = itertools.count(1)
        self._bg: set[asyncio.Task] = set()
        self.base_ms = 1_700_000_000_000

    def by_task(self, task_id: str) -> FakeContainer:
        found = [c for c in self.containers.values() if c.spec.task_id == task_id]
        if not found:
            raise LookupError(f"no container for {task_id}")
        return found[0]

    def has(self, task_id: str) -> bool:
        return any(c.spec.task_id == task_id for c in self.containers.values())

    async def has_image(self, image: str) -> bool:
        return image in self.images

    async def pull(self, image: str, progress) -> None:
        progress("pulling 1.0/1.0 MB")
        self.pulled.append(image)
        self.images.add(image)

    async def create(self, spec: ContainerSpec) -> str:
        cid = f"c{next(self._ids)}"
        self.containers[cid] = FakeContainer(cid, spec, self.scripts.get(spec.task_id, Script()))
        return cid

    async def start(self, cid: str) -> None:
        c = self.containers[cid]
        if c.started:
            raise AssertionError("started twice")
        c.running = c.started = True
        t = asyncio.create_task(self._play(c))
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _play(self, c: FakeContainer) -> None:
        for i, text in enumerate(c.script.lines):
            if not c.running:
                return
            c.log.append((LogStream.STDOUT, text, self.base_ms + i // c.script.per_ms))
            c.changed.set()
            if i % 100 == 99:
                await asyncio.sleep(0)
        if c.script.hang:
            return
        self._exit(c, 137 if c.script.oom else c.script.exit_code, c.script.oom)

    def _exit(self, c: FakeContainer, code: int, oom: bool) -> None:
        if c.running:
            c.running = False
            c.exit = ExitInfo(code, oom)
            c.changed.set()

    async def follow_logs(self, cid: str, since_s: float | None = None):
        c = self.containers[cid]
        i = 0
        while True:
            while i < len(c.log):
                stream, text, t = c.log[i]
                i += 1
                if since_s is None or t >= since_s * 1000 - 0.5:
                    yield [(stream, text.encode() + b"\n", t)]  # a chunk of one line, as logstream gives
            if not c.running and i >= len(c.log):
                return
            c.changed.clear()
            await c.changed.wait()

    async def wait(self, cid: str) -> ExitInfo:
        if self.fail_waits:
            self.fail_waits -= 1
            raise RuntimeUnavailable("Docker went away (fake)")
        c = self.containers[cid]
        while c.exit is None:
            c.changed.clear()
            await c.changed.wait()
        return c.exit

    async def kill(self, cid: str) -> None:
        c = self.containers.get(cid)
        if c is not None:
            self._exit(c, 137, False)

    async def remove(self, cid: str) -> None:
        if self.containers.pop(cid, None) is not None:
            self.removed.append(cid)

    async def inspect(self, cid: str) -> ContainerInfo | None:
        return next((c for c in await self.list_managed() if c.container_id == cid), None)

    async def list_managed(self) -> list[ContainerInfo]:
        return [
            ContainerInfo(c.cid, c.spec.task_id, c.running, None if c.running else (c.exit.exit_code if c.exit else 0),
                          bool(c.exit and c.exit.oom_killed), node_id=c.spec.node_id, image=c.spec.image,
                          started_at_ms=1 if c.started else 0)
            for c in self.containers.values()
        ]

    async def stats(self, cid: str) -> ContainerStats | None:
        c = self.containers.get(cid)
        return self.usage.get(c.spec.task_id) if c is not None and c.running else None

    async def set_cpu_shares(self, cid: str, shares: int) -> None:
        self.containers[cid].shares.append(shares)

    async def gc_images(self, in_use, keep, high_percent, low_percent, candidates=None) -> list[str]:
        self.gc_calls += 1
        return []


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_bundle(path: Path, files: dict[str, str]) -> tuple[int, str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    path.write_bytes(buf.getvalue())
    return path.stat().st_size, sha256_file(path)



CAPACITY = Resources(cpu_millicores=4000, memory_bytes=8 * 1024**3, gpu_count=0)


def request(task_id: str, **kw) -> TaskRequest:
    kw.setdefault("resources", Resources(1000, 256 * 1024**2))
    return TaskRequest(task_id=task_id, **kw)


if TYPE_CHECKING:  # mypy (tests/unit/core/test_types.py) holds the fakes to the seams they stand in for
    _runtime: ContainerRuntime = FakeRuntime()
    _clock: Clock = FakeClock()


def records(chunks: list) -> list:
    """The spool's chunks line by line (LogRecords, decoded): what the tests compare."""
    return [rec for chunk in chunks for rec in chunk.records()]
