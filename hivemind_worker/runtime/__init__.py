"""The container runtime: runs task containers in Docker, hardened and limited.

This package talks to Docker (docker-py, in threads) and NVML; nothing else in
the worker does. docker-py loads at the first call that needs it: an idle node's
read-only questions (version, info, its task containers) go through
engine_probe.py (the standard library over the engine's unix socket; issue 13). It knows nothing of the master, the journal or task states: the
task manager (hivemind_worker.tasks) drives it. It never runs anything on the
host: every failure is an exception, never a fallback.

API (the task manager codes against runtime/api.py; the values are these)::

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

    DockerRuntime(client_factory=default_client, gpu_inventory: GpuInventory | None = None,
                  egress: EgressPolicy | None = None)   # names of the bridge tasks' network
        implements runtime/api.py's ContainerRuntime (the methods the task layer uses,
        with their promises, checked by mypy), plus: async version() -> str
        (RuntimeUnavailable with a fix line), async gpu_inventory() -> GpuInventory,
        close(). create() chowns the workspace to spec.user and (re)installs the egress
        firewall for a bridge task first: TaskError (fail closed) when it cannot.

    GpuDevice(index, uuid, name, memory_bytes); .device_id (uuid or index)
    GpuInventory (Protocol): nvidia_runtime: bool; devices() -> list[GpuDevice]
    NvmlGpuInventory(nvidia_runtime), StaticGpuInventory(devices, nvidia_runtime=True)
    GpuAllocator(inventory, max_gpus=-1) (implements api.GpuPool): total, free, check(count) (TaskRejected with the
        reason), allocate(task_id, count) -> device ids, restore(task_id, ids), release(task_id),
        held_by(task_id)

run_task.sh exit codes: EXIT_DEPS_FAILED (97, "[hivemind] dependency install failed: ..."
on stderr), EXIT_NO_ENTRYPOINT (98); EXIT_OOM = 137 (with ExitInfo.oom_killed).
Errors: RuntimeUnavailable (Docker unreachable/broken), TaskError (this task's container
or image failed), TaskRejected (GPU request impossible). Docker errors never escape.
"""

from hivemind_worker.runtime.api import ContainerRuntime, GpuPool
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
    "ContainerRuntime",
    "GpuPool",
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

