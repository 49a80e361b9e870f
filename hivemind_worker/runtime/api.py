"""The runtime's seams as types: what the task layer may ask of a container runtime
and of a GPU pool. DockerRuntime and GpuAllocator implement them; the task manager and
runner are annotated with them, and mypy checks that the real classes and the
hand-written fakes (tests/unit/tasks/fakes.py) keep to them (tests/unit/core/test_types.py).

Behaviour that types cannot say is documented on each method here; the package
docstring (runtime/__init__.py) lists the values (ContainerSpec, ExitInfo, ...).
"""

from __future__ import annotations

from typing import AsyncIterator, Callable, Iterable, Protocol

from hivemind_worker.runtime.spec import ContainerInfo, ContainerSpec, ContainerStats, ExitInfo
from hivemind_worker.vocab import LogStream

# (stream, complete lines as the task wrote them, each ending in b"\n", time in unix ms):
# see runtime/logstream.py
LogChunk = tuple[LogStream, bytes, int]


class ContainerRuntime(Protocol):
    """Errors: RuntimeUnavailable (the engine is away or broken), TaskError (this task's
    container or image failed). Nothing else escapes."""

    async def has_image(self, image: str, /) -> bool: ...

    async def pull(self, image: str, progress: Callable[[str], None], /) -> None:
        """``progress("pulling 12.5/80.0 MB")`` runs on the event loop, at most ~1/s."""

    async def create(self, spec: ContainerSpec, /) -> str:
        """The container id; chowns the workspace to spec.user. TaskError when a
        container for the task exists already: reconcile (list_managed, remove) first."""

    async def start(self, container_id: str, /) -> None:
        """TaskError (e.g. GPU driver missing); the container then stays Created: remove() it."""

    def follow_logs(self, container_id: str, /, since_s: float | None = None) -> AsyncIterator[list[LogChunk]]:
        """The container's output in batches of chunks, in order (a batch: what one read
        brought; a chunk: consecutive lines of one stream, raw bytes; per line would cost
        more than the line at the engine's rate). Ends when the container exits;
        ``since_s`` (epoch seconds) is inclusive. A chunk whose time is
        logstream.INTERRUPTED is what a broken stream had of an unfinished line (no
        newline), just before RuntimeUnavailable. Close it with contextlib.aclosing() to stop its reader
        at once when leaving early."""

    async def wait(self, container_id: str, /) -> ExitInfo: ...

    async def kill(self, container_id: str, /) -> None:
        """Idempotent: a container that is gone or not running is fine."""

    async def remove(self, container_id: str, /) -> None:
        """Idempotent, forced."""

    async def inspect(self, container_id: str, /) -> ContainerInfo | None: ...

    async def list_managed(self) -> list[ContainerInfo]:
        """Every container this worker made (label hivemind.managed=1)."""

    async def set_cpu_shares(self, container_id: str, shares: int, /) -> None: ...

    async def stats(self, container_id: str, /) -> ContainerStats | None:
        """None when gone; cpu_percent is against the previous call (0.0 the first time)."""

    async def gc_images(self, in_use: set[str], keep: set[str], high_percent: float, low_percent: float,
                        candidates: Iterable[str] | None = None, /) -> list[str]:
        """Remove unused task images while the engine's disk is above high, down to low."""


class GpuPool(Protocol):
    """Exclusive GPU device ids per task; synchronous, used on the event loop only."""

    def allocate(self, task_id: str, count: int, /) -> tuple[str, ...]:
        """``count`` free device ids for the task (idempotent); TaskRejected when impossible."""

    def restore(self, task_id: str, device_ids: tuple[str, ...], /) -> None:
        """Re-register what a running container already holds (after a restart)."""

    def release(self, task_id: str, /) -> None: ...
