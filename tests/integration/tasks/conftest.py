"""Fixtures for the task manager against a real Docker engine: a DockerRuntime, a
node id of the test's own (so parallel runs never touch each other's containers),
and cleanup of every container carrying that node id."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hivemind_worker.config import Settings


@pytest.fixture
def node_id(docker_client) -> str:
    node = f"test-tasks-{uuid.uuid4().hex[:10]}"
    yield node
    for c in docker_client.containers.list(all=True, filters={"label": f"hivemind.node_id={node}"}):
        c.remove(force=True)


@pytest.fixture
def docker_runtime(docker_client):
    from hivemind_worker.runtime import DockerRuntime

    rt = DockerRuntime()
    yield rt
    rt.close()


@pytest.fixture
def settings(tmp_path: Path, task_image: str) -> Settings:
    return Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_image=task_image, task_timeout_s=120)
