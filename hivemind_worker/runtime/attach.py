"""Attach streams opened before a container starts (so that its first line is not
missed), held until the container's log follower takes one (logstream.follow).

No interpretation of the output here; this module only opens, holds and closes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, AsyncIterator, Callable

from hivemind_worker.errors import WorkerError
from hivemind_worker.runtime import logstream
from hivemind_worker.runtime.logstream import Chunk

logger = logging.getLogger(__name__)

# An attach stream nobody reads would stall its container once the socket's buffer is
# full (the engine writes to every attached reader in turn): one not taken this soon
# (a helper container, a follower that never came) is closed; a late follower then
# reads the logs endpoint from the start, and loses nothing.
TAKE_WITHIN_S = 30.0


def open_attach_stream(api: Any, container_id: str) -> Any:
    """POST /containers/{id}/attach?stream=1: the container's output as the engine
    copies it, before its log driver (which keeps it for `docker logs` and for a
    resumed read). Opened before the container starts, it misses nothing."""
    params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
    response = api._post(api._url("/containers/{0}/attach", container_id), params=params, stream=True)
    api._raise_for_status(response)
    api._disable_socket_timeout(api._get_raw_response_socket(response))
    return response


class Attachments:
    """Attach streams opened before their container started, until its follower takes
    one. Thread-safe (opened and taken in docker-py's threads)."""

    def __init__(self) -> None:
        self._held: dict[str, Any] = {}
        self._lock = threading.Lock()

    def open(self, attach: Callable[[str], Any], container_id: str) -> None:
        """Open (blocking) and hold the stream ``attach(container_id)`` gives: engine_probe's,
        or docker-py's through open_attach_stream."""
        try:
            response = attach(container_id)
        except Exception as exc:  # the follower reads the logs endpoint instead
            logger.warning("could not attach to container %s before its start (%s); following its logs instead",
                           container_id[:12], exc)
            return
        with self._lock:
            old, self._held[container_id] = self._held.get(container_id), response
        if old is not None:
            old.close()
        timer = threading.Timer(TAKE_WITHIN_S, self._expire, (container_id, response))
        timer.daemon = True
        timer.start()

    def _expire(self, container_id: str, response: Any) -> None:
        with self._lock:
            if id(self._held.get(container_id)) != id(response):
                return  # taken
            del self._held[container_id]
        response.close()

    def follow(self, api_of: Callable[[], Any], container_id: str, since_s: float | None,
               translate: Callable[[BaseException], WorkerError]) -> AsyncIterator[list[Chunk]]:
        """logstream.follow of the attach stream opened at the start if nobody took it
        yet (``since_s`` None), else of the logs endpoint (a resumed read)."""

        def open_stream() -> tuple[Any, bool]:
            response = self.take(container_id) if since_s is None else None
            if response is not None:
                return response, False
            return logstream.open_log_stream(api_of(), container_id, since_s), True

        def running() -> bool:
            return bool(api_of().inspect_container(container_id)["State"].get("Running"))

        return logstream.follow(open_stream, api_of, translate, container_id[:12], running)

    def take(self, container_id: str) -> Any:
        with self._lock:
            return self._held.pop(container_id, None)

    def drop(self, container_id: str) -> None:
        response = self.take(container_id)
        if response is not None:
            response.close()
