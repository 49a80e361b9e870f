"""EngineProbe: the node's calls to the Docker engine that go through the standard
library (http.client over the engine's unix socket) instead of docker-py.

Why it exists (issue 13): docker-py with requests, urllib3, charset_normalizer and
idna costs ~8 MB resident, and each of its calls ~1.1-1.5 ms of CPU here against
~0.4 ms through http.client. An idle node only asks the engine its version, its info
and its labelled task containers, so it never loads docker-py; a task's life
(create, attach, start, wait, inspect, kill, remove) through here cost the node 22-26
ms of CPU per task instead of 36-38 (100 tasks at concurrency 4), which on a busy
2-core host is the engine's own time. docker-py still builds the create call's body
(its ContainerConfig) and serves what is not here (the logs endpoint of a resumed
read, pulls, images, networks, stats). DOCKER_HOST unset or unix://PATH as docker-py
reads it; any other host (tcp, ssh, TLS) has no probe (``for_env`` returns None) and
docker-py does everything. Each call opens a connection of its own: a shutting-down
engine refuses it at once (see DockerRuntime._inspect_fresh).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any

from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.runtime.dockertime import docker_time_ms
from hivemind_worker.runtime.logstream import RawStream
from hivemind_worker.runtime.spec import LABEL_GPUS, LABEL_NODE, LABEL_TASK, ContainerInfo
from hivemind_worker.runtime.translate import FIX_DOCKER, EngineRefused

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 60.0  # docker-py's default


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EngineProbe:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    @classmethod
    def for_env(cls) -> EngineProbe | None:
        """The probe for DOCKER_HOST (unset or unix://PATH), else None (docker-py's)."""
        host = os.environ.get("DOCKER_HOST", "")
        if not host:
            return cls()
        path = host[len("unix://"):] if host.startswith("unix://") else None
        if path is None or os.environ.get("DOCKER_TLS_VERIFY") or (path and not path.startswith("/")):
            return None  # tcp, ssh, TLS, a relative path: docker-py's own reading of it
        return cls(path or DEFAULT_SOCKET)

    def version(self) -> dict[str, Any]:
        return self._get("/version", "ask Docker for its version")

    def info(self) -> dict[str, Any]:
        return self._get("/info", "ask Docker for its info")

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Every container (running or not) with ``label`` ("key=value")."""
        query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
        return self._get(f"/containers/json?{query}", "list task containers")

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's inspection, None if it is gone."""
        return self._get(f"/containers/{_quote(container_id)}/json", f"inspect container {container_id[:12]}", missing_ok=True)

    # -- a task's life (the caller translates EngineRefused; see translate.py) --------

    def create(self, name: str, config: dict[str, Any], api_version: str) -> str:
        """POST /containers/create with docker-py's ContainerConfig; the new id."""
        query = urllib.parse.urlencode({"name": name})
        return self._call("POST", f"/v{api_version}/containers/create?{query}", f"create container {name}",
                          config)["Id"]

    def start(self, container_id: str) -> None:
        self._call("POST", f"/containers/{_quote(container_id)}/start", f"start container {container_id[:12]}")

    def wait(self, container_id: str) -> int:
        """Block until the container stops (no timeout: tasks run for hours); its exit code."""
        found = self._call("POST", f"/containers/{_quote(container_id)}/wait",
                           f"wait for container {container_id[:12]}", timeout_s=None)
        return int(found["StatusCode"])

    def attach(self, container_id: str) -> RawStream:
        """POST /containers/{id}/attach (stdout, stderr, stream, no logs): the
        container's output as the engine copies it, read with no timeout (a task may
        be quiet for hours). Opened before the start, it misses nothing."""
        what = f"attach to container {container_id[:12]}"
        conn = _UnixConnection(self.socket_path, self.timeout_s)
        try:
            conn.request("POST", f"/containers/{_quote(container_id)}/attach?stdout=1&stderr=1&stream=1&logs=0")
            sock = conn.sock  # the response closes the connection's hold on it, not the socket
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RuntimeUnavailable(f"{what}: Docker engine not reachable at {self.socket_path} ({exc}); "
                                     f"{FIX_DOCKER}") from exc
        if response.status != 200:
            body = response.read()
            conn.close()
            raise EngineRefused(response.status, _message(body))
        sock.settimeout(None)
        return RawStream(response.fp, sock, (response, conn))

    def kill(self, container_id: str) -> None:
        self._call("POST", f"/containers/{_quote(container_id)}/kill", f"kill container {container_id[:12]}")

    def remove(self, container_id: str) -> None:
        """Force-remove the container and its anonymous volumes."""
        self._call("DELETE", f"/containers/{_quote(container_id)}?force=1&v=1", f"remove container {container_id[:12]}")

    # -- plumbing --------------------------------------------------------------------

    def _get(self, path: str, what: str, missing_ok: bool = False) -> Any:
        status, body = self._send("GET", path, what, None, self.timeout_s)
        if status == 404 and missing_ok:
            return None
        if status != 200:
            text = " ".join(body.decode(errors="replace").split())[:300]
            raise RuntimeUnavailable(f"{what}: Docker answered {status} ({text}); "
                                     "check `docker info` and dockerd's log")
        return self._json(body, what)

    def _call(self, method: str, path: str, what: str, payload: Any = None,
              timeout_s: float | None = TIMEOUT_S) -> Any:
        """A call whose error statuses the caller tells apart (404, 409): EngineRefused."""
        status, body = self._send(method, path, what, payload, timeout_s)
        if status >= 400:
            raise EngineRefused(status, _message(body))
        return self._json(body, what) if body else None

    def _send(self, method: str, path: str, what: str, payload: Any, timeout_s: float | None) -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket_path, timeout_s)
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except TimeoutError as exc:
            raise RuntimeUnavailable(f"{what}: Docker engine did not answer in {timeout_s:g} s; "
                                     "check `docker info` and dockerd's log") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(f"{what}: Docker engine not reachable at {self.socket_path} ({exc}); "
                                     f"{FIX_DOCKER}") from exc
        finally:
            conn.close()

    @staticmethod
    def _json(body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise RuntimeUnavailable(f"{what}: Docker answered something that is not JSON ({exc}); "
                                     "check that DOCKER_HOST points at a Docker engine") from exc


class DockerPyCalls:
    """EngineProbe's task calls through docker-py, for an engine the probe cannot reach
    (DOCKER_HOST over tcp, ssh or TLS)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def create(self, name: str, config: dict[str, Any], api_version: str) -> str:
        return self.api.create_container_from_config(config, name)["Id"]

    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    def wait(self, container_id: str) -> int:
        return int(self.api.wait(container_id, timeout=None)["StatusCode"])

    def kill(self, container_id: str) -> None:
        self.api.kill(container_id)

    def remove(self, container_id: str) -> None:
        self.api.remove_container(container_id, force=True, v=True)


def _message(body: bytes) -> str:
    """The engine's reason in an error answer ({"message": ...}), short."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    return " ".join(message.split())[:300]


def _quote(container_id: str) -> str:
    return urllib.parse.quote(container_id, safe="")


def _ms(stamp: str | None) -> int:
    if not stamp or stamp.startswith("0001-"):
        return 0
    try:
        return docker_time_ms(stamp)
    except ValueError:
        return 0


def container_info(attrs: dict[str, Any]) -> ContainerInfo:
    """Our view of a container from its inspection (either client's)."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = attrs.get("State") or {}
    running = bool(state.get("Running") or state.get("Restarting") or state.get("Paused"))
    started = _ms(state.get("StartedAt"))
    # A container created but never started has no exit code yet either.
    exit_code = None if running or not started else int(state.get("ExitCode", -1))
    gpus = labels.get(LABEL_GPUS, "")
    return ContainerInfo(
        container_id=attrs["Id"],
        task_id=labels.get(LABEL_TASK, ""),
        running=running,
        exit_code=exit_code,
        oom_killed=bool(state.get("OOMKilled")),
        node_id=labels.get(LABEL_NODE, ""),
        image=(attrs.get("Config") or {}).get("Image", ""),
        gpu_device_ids=tuple(g for g in gpus.split(",") if g),
        started_at_ms=started,
        pid=int(state.get("Pid") or 0),
        image_id=attrs.get("Image", ""),
    )
