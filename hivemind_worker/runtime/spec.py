"""Values that cross the runtime boundary, and the one place that turns a
ContainerSpec into Docker's create arguments (the hardening lives here).

Pure: no Docker calls, no I/O, so the hardening can be read and unit-tested at a
glance. It must never produce a privileged container, a capability, the Docker
socket or a host network, and a bridge task only ever joins the firewalled egress
network (egress.py), never Docker's default bridge.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hivemind_worker.errors import TaskError
from hivemind_worker.vocab import NetworkPolicy

LABEL_TASK = "hivemind.task_id"
LABEL_NODE = "hivemind.node_id"
LABEL_MANAGED = "hivemind.managed"
LABEL_GPUS = "hivemind.gpu_device_ids"

WORKSPACE = "/workspace"
OUTPUT_DIR = "/workspace/output"
CA_BUNDLE_PATH = "/etc/hivemind/ca-bundle.pem"

# run_task.sh's own exit codes (see run_task.sh).
EXIT_DEPS_FAILED = 97
EXIT_NO_ENTRYPOINT = 98
EXIT_OOM = 137  # SIGKILL, as the kernel's OOM killer sends it

# An id no host account has (see Settings.task_user); tasks/policy.py checks the host's.
DEFAULT_TASK_USER = "65100:65100"
# The Docker network of `bridge` tasks: egress.py firewalls it (no LAN, no metadata,
# no host); never Docker's default bridge, which reaches all of them.
EGRESS_NETWORK = "hivemind-egress"

SANDBOX_PIDS_HEADROOM = 128  # see create_kwargs

LOG_MAX_SIZE = "100m"  # Docker's own log file per container, rotated: bounded disk
LOG_MAX_FILES = "3"
TMPFS_MAX_BYTES = 512 * 1024**2
TMPFS_MIN_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class ContainerSpec:
    """One task container. ``cpu_millicores`` / ``memory_bytes`` of 0 mean no limit
    (admission normally always sets them). ``workspace`` is a host directory,
    mounted read-write at /workspace; create() makes it owned by ``user``."""

    task_id: str
    node_id: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    workspace: Path
    cpu_millicores: int
    memory_bytes: int
    pids_limit: int
    gpu_device_ids: tuple[str, ...]
    network: NetworkPolicy
    user: str = DEFAULT_TASK_USER
    ca_bundle: Path | None = None
    cpu_shares: int = 1024
    entrypoint: str = ""  # the bundle's entry file for run_task.sh; "" = main.py
    runtime: str = ""  # OCI runtime for a --network none task (e.g. runsc); "" = the engine's default
    egress_network: str = EGRESS_NETWORK  # the network of a bridge task


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    oom_killed: bool


@dataclass(frozen=True)
class ContainerInfo:
    container_id: str
    task_id: str
    running: bool
    exit_code: int | None  # None while running
    oom_killed: bool
    node_id: str = ""
    image: str = ""
    gpu_device_ids: tuple[str, ...] = ()
    started_at_ms: int = 0  # 0 = never started
    pid: int = 0  # the container's init process on the host (0 when not running): finds its cgroup
    image_id: str = ""  # "sha256:..." of the image it runs (the usage record's image_digest)


@dataclass(frozen=True)
class ContainerStats:
    cpu_percent: float  # of one core: 250.0 = two and a half cores busy
    memory_bytes: int  # working set (page cache excluded)
    read_bytes: int  # block I/O since start
    write_bytes: int
    memory_limit_bytes: int = 0
    pids: int = 0


def container_name(task_id: str) -> str:
    """A readable, valid, unique-per-task container name (`docker ps` shows it)."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", task_id)[:100]
    return f"hivemind-task-{safe}"


def container_env(spec: ContainerSpec) -> dict[str, str]:
    env = dict(spec.env)
    # Ours win over the task's: they describe the sandbox the task is in.
    env.update(
        {
            "HIVEMIND_TASK_ID": spec.task_id,
            "HIVEMIND_WORKSPACE": WORKSPACE,
            "HIVEMIND_OUTPUT_DIR": OUTPUT_DIR,
            "HIVEMIND_NETWORK": spec.network.value,
            "HOME": "/tmp",  # the root file system is read-only
            "PYTHONUNBUFFERED": "1",  # lines reach the log as they are printed
        }
    )
    if spec.entrypoint:
        env["HIVEMIND_ENTRYPOINT"] = spec.entrypoint
    if spec.ca_bundle is not None:
        for key in ("HIVEMIND_CA_BUNDLE", "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            env[key] = CA_BUNDLE_PATH
    return env


def userns_base(info: dict[str, Any]) -> int:
    """0, or under userns-remap the host id of container id 0: Docker then keeps its
    state in <data-root>/<uid>.<gid>, and `docker info` shows that directory."""
    if "name=userns" not in " ".join(info.get("SecurityOptions") or []):
        return 0
    uid, _, _ = Path(info.get("DockerRootDir", "")).name.partition(".")
    return int(uid) if uid.isdigit() else 0


def host_user(user: str, base: int) -> str:
    """The task user as the host sees it (the workspace must be that id's)."""
    uid, _, gid = user.partition(":")
    if not base or not uid.isdigit():
        return user
    return f"{int(uid) + base}:{int(gid or uid) + base}"


def create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """Keyword arguments for ``docker.DockerClient.containers.create``."""
    import docker.types  # here: an idle node never loads docker-py (engine_probe.py)

    if not spec.workspace.is_absolute():
        raise ValueError(f"workspace must be an absolute path, got {spec.workspace}")
    mounts = [docker.types.Mount(WORKSPACE, str(spec.workspace), type="bind", read_only=False)]
    if spec.ca_bundle is not None:
        mounts.append(docker.types.Mount(CA_BUNDLE_PATH, str(spec.ca_bundle), type="bind", read_only=True))
    tmpfs_bytes = TMPFS_MAX_BYTES
    if spec.memory_bytes:
        # tmpfs pages are charged to the container's memory: keep room for the task.
        tmpfs_bytes = max(TMPFS_MIN_BYTES, min(TMPFS_MAX_BYTES, spec.memory_bytes // 2))
    labels = {LABEL_TASK: spec.task_id, LABEL_NODE: spec.node_id, LABEL_MANAGED: "1"}
    kwargs: dict[str, Any] = dict(
        image=spec.image,
        command=list(spec.command) or None,
        name=container_name(spec.task_id),
        labels=labels,
        environment=container_env(spec),
        user=spec.user,
        working_dir=WORKSPACE,
        mounts=mounts,
        read_only=True,
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={tmpfs_bytes}"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        privileged=False,
        ipc_mode="private",
        network_mode=spec.egress_network if spec.network is NetworkPolicy.BRIDGE else "none",
        pids_limit=spec.pids_limit,
        # No core dumps: a crashing task would write its memory (secrets, the input
        # of others' jobs) to disk, as large as its memory limit.
        ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)],
        cpu_shares=spec.cpu_shares,
        init=True,  # reaps zombies (fork bombs) and passes signals on
        oom_score_adj=500,  # under host memory pressure a task dies before the agent
        log_config=docker.types.LogConfig(
            type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES}
        ),
        detach=True,
    )
    if spec.runtime and spec.network is NetworkPolicy.NONE and not spec.gpu_device_ids:
        # Only networkless CPU tasks; bridge and GPU tasks run under the engine's default.
        # Debian's runsc (2022) cannot pass GPUs through, and its own network stack
        # refuses any bridge network on kernels where /proc/sys/net/core/rmem_default
        # exists in every namespace (it takes that for the root one). Registered with
        # --network=host it does join one (the container's namespace, egress firewall
        # intact: tried), but then hands the sandbox the host kernel's network stack.
        kwargs["runtime"] = spec.runtime
        # gVisor's own threads (~55 idle) live in the task's pids cgroup: without room
        # for them a task under it dies at its first fork (measured: pids 64 -> exit 2).
        kwargs["pids_limit"] = spec.pids_limit + SANDBOX_PIDS_HEADROOM
    if spec.cpu_millicores:
        kwargs["nano_cpus"] = spec.cpu_millicores * 1_000_000
    if spec.memory_bytes:
        kwargs["mem_limit"] = spec.memory_bytes
        kwargs["memswap_limit"] = spec.memory_bytes  # no swap: the limit is the limit
    if spec.gpu_device_ids:
        labels[LABEL_GPUS] = ",".join(spec.gpu_device_ids)
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=list(spec.gpu_device_ids), capabilities=[["gpu"]])
        ]
    return kwargs


def prepare_workspace(workspace: Path, user: str) -> None:
    """The task's user must own its workspace (it runs unprivileged)."""
    if not workspace.is_dir():
        raise TaskError(f"workspace {workspace} does not exist; the task manager creates it before the container")
    (workspace / "output").mkdir(exist_ok=True)
    if os.geteuid() != 0:
        return  # cannot chown; the caller must have made it writable
    uid_text, _, gid_text = user.partition(":")
    if not uid_text.isdigit():
        return  # a user name: resolved inside the image, not here
    uid, gid = int(uid_text), int(gid_text) if gid_text.isdigit() else -1
    os.lchown(workspace, uid, gid)
    for root, dirs, files in os.walk(workspace):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)
