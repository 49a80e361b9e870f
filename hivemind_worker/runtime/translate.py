"""The one boundary where docker-py, requests and engine_probe errors become ours.

Every call into Docker goes through ``translate``: a daemon that cannot be reached
is RuntimeUnavailable (the node is broken: fix Docker), anything about one
container or image is TaskError (the task fails, the node carries on).
"""

from __future__ import annotations

from typing import Any

from hivemind_worker.errors import RuntimeUnavailable, TaskError, WorkerError

FIX_DOCKER = (
    "start the Docker engine (`systemctl start docker`, or `dockerd`) and make sure this "
    "user may use /var/run/docker.sock (or DOCKER_HOST points at it)"
)


class EngineRefused(Exception):
    """The engine answered an engine_probe call with an error status (docker-py's
    APIError, for the calls that do not go through docker-py)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status_code, self.explanation = status, message


def translate(exc: BaseException, what: str) -> WorkerError:
    """Our error for ``exc``, raised while doing ``what`` (e.g. "create container for task t1")."""
    if isinstance(exc, WorkerError):
        return exc
    if isinstance(exc, EngineRefused):
        if is_image_missing(exc):
            return TaskError(f"{what}: image not found ({_explain(exc)}); check the image name and tag, or pull it")
        if exc.status_code == 404:
            return TaskError(f"{what}: no such container or image ({_explain(exc)})")
        if exc.status_code >= 500 and "Cannot connect" in exc.explanation:
            return RuntimeUnavailable(f"{what}: {_explain(exc)}; {FIX_DOCKER}")
        return TaskError(f"{what}: Docker refused: {_explain(exc)}")
    # Here, not at the top: an idle node never loads docker-py (engine_probe.py).
    import docker.errors
    import requests.exceptions

    if isinstance(exc, requests.exceptions.ConnectionError | FileNotFoundError | ConnectionError):
        return RuntimeUnavailable(f"{what}: Docker engine not reachable ({_short(exc)}); {FIX_DOCKER}")
    if isinstance(exc, requests.exceptions.Timeout):
        return RuntimeUnavailable(f"{what}: Docker engine did not answer in time; check `docker info` and dockerd's log")
    if isinstance(exc, docker.errors.ImageNotFound):
        return TaskError(f"{what}: image not found ({_explain(exc)}); check the image name and tag, or pull it")
    if isinstance(exc, docker.errors.NotFound):
        return TaskError(f"{what}: no such container or image ({_explain(exc)})")
    if isinstance(exc, docker.errors.APIError):
        if exc.status_code is not None and exc.status_code >= 500 and "Cannot connect" in str(exc):
            return RuntimeUnavailable(f"{what}: {_explain(exc)}; {FIX_DOCKER}")
        return TaskError(f"{what}: Docker refused: {_explain(exc)}")
    if isinstance(exc, docker.errors.DockerException):
        # from_env() and friends: no socket, bad DOCKER_HOST, TLS config...
        return RuntimeUnavailable(f"{what}: {_short(exc)}; {FIX_DOCKER}")
    if isinstance(exc, requests.exceptions.RequestException):
        return RuntimeUnavailable(f"{what}: talking to Docker failed ({_short(exc)}); check `docker info`")
    return TaskError(f"{what}: unexpected error from the container runtime: {_short(exc)}")


def docker_errors() -> Any:
    """docker.errors, imported at the first need: an idle node never loads docker-py
    (engine_probe.py). In an ``except docker_errors().X:`` clause it runs only when
    something was raised."""
    import docker.errors

    return docker.errors


def is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, EngineRefused):
        return exc.status_code == 404
    return isinstance(exc, docker_errors().NotFound)


def is_image_missing(exc: BaseException) -> bool:
    """Docker says 404 "No such image" when a container is created from an image it lacks."""
    if isinstance(exc, EngineRefused):
        return exc.status_code == 404 and "no such image" in exc.explanation.lower()
    return isinstance(exc, docker_errors().ImageNotFound)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, EngineRefused | docker_errors().APIError) and exc.status_code == 409


def _explain(exc: Any) -> str:  # a docker.errors.APIError or an EngineRefused
    text = exc.explanation if getattr(exc, "explanation", None) else str(exc)
    return _short(text)


def _short(exc: object) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
