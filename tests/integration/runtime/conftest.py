"""Fixtures for the runtime's Docker tests: a DockerRuntime on the real engine, a
workspace per test, and the removal of every container a test created (they all
carry task ids starting with this session's prefix)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest

from hivemind_worker.runtime import ContainerSpec, DockerRuntime, ExitInfo
from hivemind_worker.tasks.model import LogStream, NetworkPolicy

PREFIX = f"rt-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def runtime(docker_client):
    rt = DockerRuntime(client_factory=docker.from_env)
    yield rt
    rt.close()
    for c in docker_client.api.containers(all=True, filters={"label": "hivemind.managed=1"}):
        if c["Labels"].get("hivemind.task_id", "").startswith(PREFIX):
            try:
                docker_client.api.remove_container(c["Id"], force=True)
            except docker.errors.APIError:
                pass  # already gone, or its removal is in progress


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def make_spec(task_image: str, workspace: Path):
    def make(**changes) -> ContainerSpec:
        base = ContainerSpec(
            task_id=f"{PREFIX}-{uuid.uuid4().hex[:8]}",
            node_id="node-test",
            image=task_image,
            command=(),
            env={},
            workspace=workspace,
            cpu_millicores=1000,
            memory_bytes=256 * 2**20,
            pids_limit=64,
            gpu_device_ids=(),
            network=NetworkPolicy.NONE,
        )
        return replace(base, **changes)

    return make


@dataclass
class Ran:
    container_id: str
    exit: ExitInfo
    lines: list[tuple[LogStream, str, int]]

    def text(self, stream: LogStream | None = None) -> str:
        return "\n".join(l for s, l, _ in self.lines if stream is None or s is stream)


def lines_of(chunks: list[tuple[LogStream, bytes, int]]) -> list[tuple[LogStream, str, int]]:
    """follow_logs' chunks line by line, decoded: what these tests compare."""
    return [(s, line, t) for s, text, t in chunks for line in text.decode("utf-8", "replace").split("\n")[:-1]]


async def run_to_end(rt: DockerRuntime, spec: ContainerSpec, timeout: float = 60, remove: bool = True) -> Ran:
    """create -> start -> follow logs -> wait, as the task manager does."""
    cid = await rt.create(spec)
    try:
        await rt.start(cid)

        async def collect():
            return [line async for batch in rt.follow_logs(cid) for line in lines_of(batch)]

        lines, exit_info = await asyncio.wait_for(asyncio.gather(collect(), rt.wait(cid)), timeout)
        return Ran(cid, exit_info, lines)
    finally:
        if remove:
            await rt.remove(cid)
