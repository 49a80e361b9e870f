"""EngineProbe: the idle node's few read-only questions to the Docker engine, asked
through the standard library (http.client over the engine's unix socket).

Why it exists: the idle footprint (issue 13). docker-py with requests, urllib3,
charset_normalizer and idna costs ~8 MB resident, and an idle node only asks the
engine its version, its info and the list of its labelled task containers. So
DockerRuntime answers those here and loads docker-py at the first call that needs it
(a task to run, a held task to re-attach, a container to remove). Only GET, JSON,
with a timeout; DOCKER_HOST unset or unix://PATH as docker-py reads it; any other
host (tcp, ssh, TLS) has no probe (``for_env`` returns None) and docker-py answers.
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
from hivemind_worker.runtime.spec import LABEL_GPUS, LABEL_NODE, LABEL_TASK, ContainerInfo
from hivemind_worker.runtime.translate import FIX_DOCKER

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 60.0  # docker-py's default


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
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
        quoted = urllib.parse.quote(container_id, safe="")
        return self._get(f"/containers/{quoted}/json", f"inspect container {container_id[:12]}", missing_ok=True)

    def _get(self, path: str, what: str, missing_ok: bool = False) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout_s)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read()
        except TimeoutError as exc:
            raise RuntimeUnavailable(f"{what}: Docker engine did not answer in {self.timeout_s:g} s; "
                                     "check `docker info` and dockerd's log") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(f"{what}: Docker engine not reachable at {self.socket_path} ({exc}); "
                                     f"{FIX_DOCKER}") from exc
        finally:
            conn.close()
        if response.status == 404 and missing_ok:
            return None
        if response.status != 200:
            text = " ".join(body.decode(errors="replace").split())[:300]
            raise RuntimeUnavailable(f"{what}: Docker answered {response.status} ({text}); "
                                     "check `docker info` and dockerd's log")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise RuntimeUnavailable(f"{what}: Docker answered something that is not JSON ({exc}); "
                                     "check that DOCKER_HOST points at a Docker engine") from exc


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
