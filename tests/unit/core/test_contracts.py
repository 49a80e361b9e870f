"""Contracts with the internals of libraries we rely on beyond their public API.

runtime/logstream.py reads a container's log stream straight from docker-py's
APIClient (its private request helpers) to get the raw socket, and monitor/server.py
drives uvicorn's Server by hand (startup / on_tick / shutdown) to keep an idle node
idle. pyproject.toml bounds both libraries; this test says loudly, by name, which
internal moved when a new release changes them, instead of a task's logs silently
stopping."""

from __future__ import annotations

import inspect

import docker
import uvicorn

DOCKER_INTERNALS = ("_get", "_url", "_raise_for_status", "_disable_socket_timeout", "_get_raw_response_socket")


def test_docker_api_client_internals_we_use_exist():
    missing = [name for name in DOCKER_INTERNALS if not callable(getattr(docker.APIClient, name, None))]
    assert not missing, f"docker-py {docker.__version__} lacks {missing}; fix runtime/logstream.py and its bound"


def test_uvicorn_server_lifecycle_we_drive_exists():
    server = uvicorn.Server
    for name in ("startup", "on_tick", "shutdown"):
        assert inspect.iscoroutinefunction(getattr(server, name, None)), f"uvicorn.Server.{name} changed"
    params = inspect.signature(server.startup).parameters
    assert "sockets" in params, "uvicorn.Server.startup no longer takes sockets="
    async def app(scope, receive, send):  # pragma: no cover - never called
        pass

    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    assert hasattr(config, "lifespan_class"), "uvicorn.Config.load() no longer sets lifespan_class"
