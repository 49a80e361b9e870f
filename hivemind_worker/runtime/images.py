"""Disk hygiene for task images: above a high watermark of the disk that holds
Docker's data, remove unused task images until usage is below the low watermark.

Only images known to be task images are candidates (what the caller names, else
what this runtime pulled or ran tasks from since it started): an operator's other
images on a shared host are never touched. An image is never removed while any
container (running or not) uses it, nor if it is in ``in_use`` or ``keep``, and
never with force. Runs in a worker thread (blocking docker-py calls).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)


def disk_percent(path: str) -> float:
    usage = shutil.disk_usage(path)
    return (usage.total - usage.free) / usage.total * 100.0 if usage.total else 0.0


class ImageGc:
    def __init__(self, measure: Callable[[str], float] = disk_percent) -> None:
        self._measure = measure
        self._seen: dict[str, float] = {}  # image ref -> last use (monotonic)
        self._root: str | None = None  # the engine's data root: asked once, not after every task
        self._lock = threading.Lock()

    def touch(self, image: str) -> None:
        with self._lock:
            self._seen[image] = time.monotonic()

    def collect(
        self,
        client: Any,
        in_use: set[str],
        keep: set[str],
        high_percent: float,
        low_percent: float,
        candidates: list[str] | None,
    ) -> list[str]:
        import docker.errors  # here: an idle node never loads docker-py (engine_probe.py)

        api = client.api
        if self._root is None:
            self._root = api.info().get("DockerRootDir") or "/var/lib/docker"
        root = self._root
        try:
            used = self._measure(root)
        except OSError as exc:
            logger.warning("image GC skipped: cannot measure %s (%s)", root, exc)
            return []
        if used < high_percent:
            return []
        with self._lock:
            order = dict(self._seen)
        refs = candidates if candidates is not None else list(order)
        # Least recently used first; images we never saw used, oldest first.
        refs = sorted(set(refs), key=lambda r: order.get(r, -1.0))

        protected = {c.get("ImageID", "") for c in api.containers(all=True)}
        for ref in in_use | keep:
            image_id = _image_id(api, ref)
            if image_id:
                protected.add(image_id)

        removed: list[str] = []
        for ref in refs:
            if used < low_percent:
                break
            image_id = _image_id(api, ref)
            if not image_id or image_id in protected or ref in in_use or ref in keep:
                continue
            try:
                api.remove_image(ref, force=False, noprune=False)
            except docker.errors.APIError as exc:
                logger.info("image GC: kept %s (%s)", ref, exc.explanation or exc)
                continue
            removed.append(ref)
            with self._lock:
                self._seen.pop(ref, None)
            logger.info("image GC: removed %s", ref)
            used = self._measure(root)
        return removed


def _image_id(api: Any, ref: str) -> str:
    import docker.errors  # here: an idle node never loads docker-py (engine_probe.py)

    try:
        return api.inspect_image(ref)["Id"]
    except docker.errors.NotFound:
        return ""
