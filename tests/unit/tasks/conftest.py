"""Fixtures for the task manager's unit tests (the fakes live in fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from tests.support.localhost import LocalTaskHost
from tests.unit.tasks.fakes import FakeRuntime


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_timeout_s=60, task_images="*")


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def host(tmp_path: Path) -> LocalTaskHost:
    return LocalTaskHost(tmp_path / "results")
