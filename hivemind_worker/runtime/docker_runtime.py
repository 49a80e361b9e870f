"""DockerRuntime: the adapter over docker-py that runs task containers.

Every blocking Docker call runs off the event loop: short ones through
``asyncio.to_thread``, the ones that last as long as a task (wait, pull, log
following) in daemon threads, so a shutting-down agent never waits for a task.
Errors are translated once, in ``_call`` (see translate.py). This module must not
know task states, the journal or the master, and it never runs a task on the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, TypeVar

from hivemind_worker.errors import TaskError, WorkerError
from hivemind_worker.runtime import attach
from hivemind_worker.runtime.engine_probe import DockerPyCalls, EngineProbe, container_info
from hivemind_worker.runtime.egress import EgressFirewall, EgressPolicy, ensure_network
from hivemind_worker.runtime.gpu import GpuInventory, NvmlGpuInventory
from hivemind_worker.runtime.images import ImageGc
from hivemind_worker.runtime.logstream import Chunk
from hivemind_worker.runtime.pull import PullProgress
from hivemind_worker.runtime.spec import (
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_TASK,
    ContainerInfo,
    ContainerSpec,
    ContainerStats,
    ExitInfo,
    create_kwargs,
    host_user,
    prepare_workspace,
    userns_base,
)
from hivemind_worker.runtime.stats import StatsReader
from hivemind_worker.runtime.translate import docker_errors, is_conflict, is_image_missing, is_not_found, translate
from hivemind_worker.vocab import NetworkPolicy

if TYPE_CHECKING:
    import docker

logger = logging.getLogger(__name__)
T = TypeVar("T")


def default_client() -> docker.DockerClient:
    import docker  # at the first call that needs docker-py: an idle node never does (engine_probe.py)

    # Each running task holds two connections (logs, wait) for its whole life.
    client = docker.from_env(max_pool_size=64)
    if client.api.base_url.startswith("http+docker://"):
        # A unix socket: no proxy, netrc or CA bundle from the environment applies, and
        # requests would scan the whole environment for them on every call.
        client.api.trust_env = False
    return client


class DockerRuntime:
    def __init__(
        self,
        client_factory: Callable[[], docker.DockerClient] = default_client,
        gpu_inventory: GpuInventory | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._client_factory = client_factory
        # The idle node's read-only questions (version, info, the task containers) go
        # through the standard library: docker-py loads at the first task (issue 13).
        self._probe = EngineProbe.for_env() if client_factory is default_client else None
        self._egress = EgressFirewall(egress or EgressPolicy())
        self._remap: int | None = None  # userns-remap's first host id; 0 = no remapping
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._gpu_inventory = gpu_inventory
        self._stats = StatsReader()
        self._attached = attach.Attachments()  # see start()
        self._images = ImageGc()
        # Images the engine had when last asked: a task of an image seen before costs no
        # inspect. create() forgets one the engine no longer has, so does the image GC.
        self._present: set[str] = set()
        self._fresh: docker.DockerClient | None = None  # see _inspect_fresh
        self._fresh_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except WorkerError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc

    async def _call_long(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Like _call, in a daemon thread of its own (see the module docstring)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                future.set_result(value) if ok else future.set_exception(value)

        def run() -> None:
            try:
                result: Any = (True, fn(*args))
            except BaseException as exc:
                result = (False, exc)
            try:
                loop.call_soon_threadsafe(settle, *result)
            except RuntimeError:
                pass  # the loop is gone; nobody waits for this any more

        threading.Thread(target=run, name=f"hivemind-{what[:40]}", daemon=True).start()
        try:
            return await future
        except WorkerError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc

    def _calls(self) -> EngineProbe | DockerPyCalls:
        """Where a task's create/start/wait/kill/remove go: the probe over a unix socket
        (a third of docker-py's CPU per call), docker-py for any other DOCKER_HOST."""
        return self._probe if self._probe is not None else DockerPyCalls(self._docker().api)

    def close(self) -> None:
        for client in (self._client, self._fresh):
            if client is not None:
                client.close()

    def _inspect_fresh(self, container_id: str) -> dict[str, Any]:
        """Inspect over a NEW connection (blocking): a shutting-down engine closes its
        socket before it stops the containers, so this fails (RuntimeUnavailable) where
        a pooled keep-alive connection would still be answered. The probe opens one per
        question anyway, at a third of docker-py's CPU (0.4 against 1.1-1.5 ms a call
        here); without a probe (DOCKER_HOST over tcp), one docker-py client kept for
        it, its pool emptied before each use (no GET /version per task)."""
        if self._probe is not None:
            found = self._probe.inspect(container_id)
            if found is None:
                raise TaskError(f"container {container_id[:12]} is gone (removed while the agent waited for it)")
            return found
        with self._fresh_lock:
            if self._fresh is None:
                self._fresh = self._client_factory()
            else:
                self._fresh.api.close()  # drops its connection; the adapters stay mounted
            return self._fresh.api.inspect_container(container_id)

    # -- engine and images -----------------------------------------------------

    async def version(self) -> str:
        probe = self._probe
        if probe is not None:
            return await self._call("ask Docker for its version", lambda: str(probe.version()["Version"]))
        return await self._call("ask Docker for its version", lambda: self._docker().version()["Version"])

    async def gpu_inventory(self) -> GpuInventory:
        if self._gpu_inventory is None:

            def detect() -> GpuInventory:
                info = self._probe.info() if self._probe is not None else self._docker().info()
                runtimes = info.get("Runtimes") or {}
                hook = shutil.which("nvidia-container-runtime-hook") or shutil.which("nvidia-container-runtime")
                inventory = NvmlGpuInventory(nvidia_runtime="nvidia" in runtimes or hook is not None)
                inventory.devices()  # NVML is slow to start: query (and cache) here, off the loop
                return inventory

            self._gpu_inventory = await self._call("ask Docker for its runtimes", detect)
        return self._gpu_inventory

    async def has_image(self, image: str) -> bool:
        if image in self._present:
            return True

        def look() -> bool:
            try:
                self._docker().api.inspect_image(image)
                return True
            except docker_errors().ImageNotFound:
                return False

        found = await self._call(f"look up image {image}", look)
        if found:
            self._present.add(image)
        return found

    async def pull(self, image: str, progress: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()

        def report(text: str) -> None:
            try:
                progress(text)
            except Exception:
                logger.exception("pull progress callback failed")

        def run() -> None:
            tally = PullProgress(image)
            for event in self._docker().api.pull(image, stream=True, decode=True):
                text = tally.update(event, time.monotonic())
                if text:
                    loop.call_soon_threadsafe(report, text)
            loop.call_soon_threadsafe(report, f"pulled {image}")

        await self._call_long(f"pull image {image}", run)
        self._images.touch(image)
        self._present.add(image)

    async def gc_images(
        self,
        in_use: set[str],
        keep: set[str],
        high_percent: float,
        low_percent: float,
        candidates: Iterable[str] | None = None,
    ) -> list[str]:
        refs = list(candidates) if candidates is not None else None
        removed = await self._call(
            "remove unused task images",
            lambda: self._images.collect(self._docker(), in_use, keep, high_percent, low_percent, refs),
        )
        self._present.difference_update(removed)
        return removed

    def _userns_base(self) -> int:
        """Under userns-remap, where the engine maps container id 0 on the host (blocking)."""
        if self._remap is None:
            self._remap = userns_base(self._docker().info())
        return self._remap

    # -- containers ------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        bridge = spec.network is NetworkPolicy.BRIDGE
        if bridge:
            spec = dataclasses.replace(spec, egress_network=self._egress.policy.network)
        try:
            kwargs = create_kwargs(spec)
        except ValueError as exc:
            raise TaskError(f"cannot create a container for task {spec.task_id}: {exc}") from exc

        def make() -> str:
            from docker.models.containers import _create_container_args

            # docker-py's own translation of the arguments into the engine's body (the
            # high-level containers.create() would inspect the new container as well).
            # No proxy settings from the docker CLI's config.json go into a task's env.
            api = self._docker().api
            args = _create_container_args({**kwargs, "version": api._version})
            name = args.pop("name")
            return self._calls().create(name, api.create_container_config(**args), api._version)

        def run() -> str:
            prepare_workspace(spec.workspace, host_user(spec.user, self._userns_base()))
            if bridge:  # fail closed: no firewall, no container
                ensure_network(self._docker(), self._egress.policy)
                self._egress.ensure()
            try:
                return make()
            except Exception as exc:
                if is_image_missing(exc):
                    self._present.discard(spec.image)  # gone since we last looked: has_image() asks again
                if not is_conflict(exc):
                    raise
                # An earlier attempt's container, left by an engine that was away when
                # the node cleaned up: ours (same task, same node) and stopped, so it goes.
                old = self._docker().api.inspect_container(kwargs["name"])
                labels = old.get("Config", {}).get("Labels") or {}
                ours = labels.get(LABEL_TASK) == spec.task_id and labels.get(LABEL_NODE) == spec.node_id
                if not ours or old.get("State", {}).get("Running"):
                    raise TaskError(
                        f"a container for task {spec.task_id} already exists ({kwargs['name']}); "
                        "remove it before creating another"
                    ) from exc
                logger.warning("removing the stopped container of an earlier attempt of task %s", spec.task_id,
                               extra={"task_id": spec.task_id, "node_id": spec.node_id})
                self._calls().remove(old["Id"])
                return make()

        container_id = await self._call(f"create container for task {spec.task_id}", run)
        self._images.touch(spec.image)
        logger.info(
            "created container %s for task %s", container_id[:12], spec.task_id,
            extra={"task_id": spec.task_id, "node_id": spec.node_id},
        )
        return container_id

    async def start(self, container_id: str) -> None:
        def run() -> None:
            # First: the task's first line is not missed.
            probe = self._probe
            if probe is not None:
                self._attached.open(probe.attach, container_id)
            else:
                self._attached.open(functools.partial(attach.open_attach_stream, self._docker().api), container_id)
            self._calls().start(container_id)

        await self._call(f"start container {container_id[:12]}", run)

    def follow_logs(self, container_id: str, since_s: float | None = None) -> AsyncIterator[list[Chunk]]:
        return self._attached.follow(lambda: self._docker().api, container_id, since_s,
                                     lambda exc: translate(exc, f"follow logs of container {container_id[:12]}"))

    async def wait(self, container_id: str) -> ExitInfo:
        def run() -> ExitInfo:
            self._calls().wait(container_id)  # no read timeout: tasks run for hours
            # A new connection: an engine going away fails it (RuntimeUnavailable), and
            # the caller tells a restart from the task's own exit.
            state = self._inspect_fresh(container_id)["State"]
            return ExitInfo(exit_code=int(state.get("ExitCode", -1)), oom_killed=bool(state.get("OOMKilled")))

        return await self._call_long(f"wait for container {container_id[:12]}", run)

    async def kill(self, container_id: str) -> None:
        def run() -> None:
            try:
                self._calls().kill(container_id)
            except Exception as exc:
                if not (is_not_found(exc) or is_conflict(exc)):  # gone, or not running
                    raise

        await self._call(f"kill container {container_id[:12]}", run)

    async def remove(self, container_id: str) -> None:
        def run() -> None:
            try:
                self._calls().remove(container_id)
            except Exception as exc:
                if not (is_not_found(exc) or is_conflict(exc)):  # gone, or removal in progress
                    raise

        await self._call(f"remove container {container_id[:12]}", run)
        self._stats.forget(container_id)
        self._attached.drop(container_id)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        probe = self._probe

        def run() -> ContainerInfo | None:
            if probe is not None:  # a read-only question: the standard library's, cheaper (see _inspect_fresh)
                attrs = probe.inspect(container_id)
                return container_info(attrs) if attrs is not None else None
            try:
                return container_info(self._docker().api.inspect_container(container_id))
            except docker_errors().NotFound:
                return None

        return await self._call(f"inspect container {container_id[:12]}", run)

    async def list_managed(self) -> list[ContainerInfo]:
        probe = self._probe
        if probe is not None:  # the idle node's start (reconcile): no docker-py

            def ask() -> list[ContainerInfo]:
                found = (probe.inspect(c["Id"]) for c in probe.containers(f"{LABEL_MANAGED}=1"))
                return [container_info(attrs) for attrs in found if attrs is not None]  # None: removed meanwhile

            return await self._call("list task containers", ask)

        def run() -> list[ContainerInfo]:
            api = self._docker().api
            found = []
            for summary in api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=1"}):
                try:
                    found.append(container_info(api.inspect_container(summary["Id"])))
                except docker_errors().NotFound:
                    continue  # removed between the listing and the inspection
            return found

        return await self._call("list task containers", run)

    async def set_cpu_shares(self, container_id: str, shares: int) -> None:
        await self._call(
            f"update CPU weight of container {container_id[:12]}",
            lambda: self._docker().api.update_container(container_id, cpu_shares=max(2, int(shares))),
        )

    async def stats(self, container_id: str) -> ContainerStats | None:
        def run() -> ContainerStats | None:
            try:
                raw = self._docker().api.stats(container_id, stream=False, one_shot=True)
            except docker_errors().NotFound:
                return None
            return self._stats.read(container_id, raw)

        return await self._call(f"read stats of container {container_id[:12]}", run)
