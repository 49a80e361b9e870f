"""The container runtime: runs task containers in Docker, hardened and limited.

This package talks to Docker (docker-py, in threads) and NVML; nothing else in
the worker does. It knows nothing of the master, the journal or task states: the
task manager (hivemind_worker.tasks) drives it. It never runs anything on the
host: every failure is an exception, never a fallback.

API (stable; the task manager codes against exactly this)::

    ContainerSpec(task_id, node_id, image, command: tuple[str, ...], env: Mapping[str, str],
                  workspace: Path, cpu_millicores: int, memory_bytes: int, pids_limit: int,
                  gpu_device_ids: tuple[str, ...], network: NetworkPolicy,
                  user="65100:65100", ca_bundle: Path | None = None, cpu_shares=1024,
                  entrypoint="",        # entrypoint -> HIVEMIND_ENTRYPOINT for run_task.sh
                  runtime="")           # OCI runtime (runsc) for networkless CPU tasks; "" = default
    ExitInfo(exit_code: int, oom_killed: bool)
    ContainerInfo(container_id, task_id, running: bool, exit_code: int | None, oom_killed: bool,
                  node_id="", image="", gpu_device_ids=(), started_at_ms=0)
    ContainerStats(cpu_percent, memory_bytes, read_bytes, write_bytes, memory_limit_bytes=0, pids=0)

    class DockerRuntime:
        def __init__(self, client_factory=docker.from_env, gpu_inventory: GpuInventory | None = None,
                     egress: EgressPolicy | None = None)   # names of the bridge tasks' network
        async def version(self) -> str                       # RuntimeUnavailable with a fix line
        async def has_image(self, image: str) -> bool
        async def pull(self, image: str, progress: Callable[[str], None]) -> None
            # progress("pulling 12.5/80.0 MB") is called on the event loop, at most ~1/s;
            # TaskError (bad name, registry refused) / RuntimeUnavailable (no Docker)
        async def create(self, spec: ContainerSpec) -> str   # container id; chowns the workspace
            # to spec.user; TaskError if a container for the task already exists (name
            # hivemind-task-<id>): reconcile with list_managed() + remove() first. A bridge
            # task joins the egress network, whose firewall create() (re)installs first:
            # TaskError (fail closed) when it cannot (see egress.py; needs root/CAP_NET_ADMIN)
        async def start(self, container_id: str) -> None     # TaskError (e.g. GPU driver missing);
            # the container then stays Created: remove() it
        def follow_logs(self, container_id: str, since_s: float | None = None)
            -> AsyncIterator[tuple[LogStream, str, int]]     # (stream, line w/o newline, time_ms);
            # ends when the container exits (start() first: on a container that is not
            # running it gives what was logged and ends); since_s (epoch seconds) is
            # inclusive, to the microsecond. Close it with contextlib.aclosing() to stop
            # its reading thread at once when leaving early.
        async def wait(self, container_id: str) -> ExitInfo   # daemon thread: never blocks shutdown
        async def kill(self, container_id: str) -> None       # idempotent (gone / not running: fine)
        async def remove(self, container_id: str) -> None     # idempotent, force
        async def inspect(self, container_id: str) -> ContainerInfo | None
        async def list_managed(self) -> list[ContainerInfo]   # label hivemind.managed=1
        async def set_cpu_shares(self, container_id: str, shares: int) -> None
        async def stats(self, container_id: str) -> ContainerStats | None   # None if gone;
            # one-shot: cpu_percent is measured against the previous call (0.0 the first time)
        async def gpu_inventory(self) -> GpuInventory         # given one, or NVML + docker info
        def close(self) -> None                               # closes the docker-py client
        async def gc_images(self, in_use: set[str], keep: set[str], high_percent: float,
                            low_percent: float, candidates: Iterable[str] | None = None) -> list[str]
            # removes unused task images (candidates, default: those this runtime pulled or
            # created containers from) while Docker's disk is above high, down to low

    GpuDevice(index, uuid, name, memory_bytes); .device_id (uuid or index)
    GpuInventory (Protocol): nvidia_runtime: bool; devices() -> list[GpuDevice]
    NvmlGpuInventory(nvidia_runtime), StaticGpuInventory(devices, nvidia_runtime=True)
    GpuAllocator(inventory, max_gpus=-1): total, free, check(count) (TaskRejected with the
        reason), allocate(task_id, count) -> device ids, restore(task_id, ids), release(task_id),
        held_by(task_id)

run_task.sh exit codes: EXIT_DEPS_FAILED (97, "[hivemind] dependency install failed: ..."
on stderr), EXIT_NO_ENTRYPOINT (98); EXIT_OOM = 137 (with ExitInfo.oom_killed).
Errors: RuntimeUnavailable (Docker unreachable/broken), TaskError (this task's container
or image failed), TaskRejected (GPU request impossible). Docker errors never escape.
"""

from hivemind_worker.runtime.docker_runtime import DockerRuntime
from hivemind_worker.runtime.gpu import (
    GpuAllocator,
    GpuDevice,
    GpuInventory,
    NvmlGpuInventory,
    StaticGpuInventory,
)
from hivemind_worker.runtime.spec import (
    EXIT_DEPS_FAILED,
    EXIT_NO_ENTRYPOINT,
    EXIT_OOM,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_TASK,
    ContainerInfo,
    ContainerSpec,
    ContainerStats,
    ExitInfo,
)

__all__ = [
    "DockerRuntime",
    "GpuAllocator",
    "GpuDevice",
    "GpuInventory",
    "NvmlGpuInventory",
    "StaticGpuInventory",
    "ContainerInfo",
    "ContainerSpec",
    "ContainerStats",
    "ExitInfo",
    "EXIT_DEPS_FAILED",
    "EXIT_NO_ENTRYPOINT",
    "EXIT_OOM",
    "LABEL_MANAGED",
    "LABEL_NODE",
    "LABEL_TASK",
]

