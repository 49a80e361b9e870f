"""PullProgress: Docker's per-layer pull events, summed into one progress line
(DockerRuntime.pull reports it as the task's PULLING detail). Pure: no Docker calls."""

from __future__ import annotations

from typing import Any

from hivemind_worker.errors import TaskError

PROGRESS_EVERY_S = 1.0


class PullProgress:
    """Docker's per-layer pull events -> "pulling 12.5/80.0 MB", at most once per
    PROGRESS_EVERY_S; an error event raises TaskError with the registry's words."""

    def __init__(self, image: str) -> None:
        self._image = image
        self._layers: dict[str, tuple[int, int]] = {}
        self._last = float("-inf")

    def update(self, event: dict[str, Any], now: float) -> str | None:
        if "error" in event:
            detail = (event.get("errorDetail") or {}).get("message") or event["error"]
            raise TaskError(f"pulling {self._image} failed: {detail}")
        layer, status = event.get("id", ""), event.get("status", "")
        numbers = event.get("progressDetail") or {}
        if status == "Downloading" and numbers.get("total"):
            self._layers[layer] = (int(numbers.get("current", 0)), int(numbers["total"]))
        elif status in ("Download complete", "Pull complete") and layer in self._layers:
            self._layers[layer] = (self._layers[layer][1], self._layers[layer][1])
        if not self._layers or now - self._last < PROGRESS_EVERY_S:
            return None
        self._last = now
        done = sum(c for c, _ in self._layers.values()) / 1e6
        total = sum(t for _, t in self._layers.values()) / 1e6
        return f"pulling {done:.1f}/{total:.1f} MB"
