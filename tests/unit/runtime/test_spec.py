"""The hardening in create_kwargs: what every task container gets, whatever the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.runtime.spec import (
    CA_BUNDLE_PATH,
    DEFAULT_TASK_USER,
    EGRESS_NETWORK,
    ContainerSpec,
    container_name,
    create_kwargs,
)
from hivemind_worker.tasks.model import NetworkPolicy


def spec(**changes) -> ContainerSpec:
    base = dict(
        task_id="t-1", node_id="n-1", image="img:1", command=(), env={"A": "1", "HIVEMIND_OUTPUT_DIR": "/etc"},
        workspace=Path("/var/lib/hivemind-worker/tasks/t-1/ws"), cpu_millicores=1500, memory_bytes=512 * 2**20,
        pids_limit=128, gpu_device_ids=(), network=NetworkPolicy.NONE,
    )
    base.update(changes)
    return ContainerSpec(**base)


def test_hardening_is_always_there():
    kw = create_kwargs(spec())
    assert kw["user"] == DEFAULT_TASK_USER != "1000:1000"  # never the first login account
    assert kw["cap_drop"] == ["ALL"]
    assert "cap_add" not in kw
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["privileged"] is False
    assert kw["read_only"] is True
    assert set(kw["tmpfs"]) == {"/tmp"}
    assert kw["network_mode"] == "none"
    assert kw["nano_cpus"] == 1_500_000_000
    assert kw["mem_limit"] == kw["memswap_limit"] == 512 * 2**20
    assert kw["pids_limit"] == 128
    assert kw["labels"] == {"hivemind.task_id": "t-1", "hivemind.node_id": "n-1", "hivemind.managed": "1"}
    sources = [m["Source"] for m in kw["mounts"]]
    assert sources == ["/var/lib/hivemind-worker/tasks/t-1/ws"]
    assert not any("docker.sock" in s for s in sources)
    assert "device_requests" not in kw


def test_our_environment_wins_over_the_tasks():
    env = create_kwargs(spec())["environment"]
    assert env["A"] == "1"
    assert env["HIVEMIND_OUTPUT_DIR"] == "/workspace/output"
    assert env["HIVEMIND_NETWORK"] == "none"


def test_bridge_tasks_join_the_egress_network_never_dockers_bridge():
    assert create_kwargs(spec(network=NetworkPolicy.BRIDGE))["network_mode"] == EGRESS_NETWORK == "hivemind-egress"
    assert create_kwargs(spec(network=NetworkPolicy.BRIDGE, egress_network="t-net"))["network_mode"] == "t-net"


def test_the_task_runtime_applies_to_networkless_cpu_tasks_only():
    assert "runtime" not in create_kwargs(spec())
    kw = create_kwargs(spec(runtime="runsc"))
    assert kw["runtime"] == "runsc" and kw["pids_limit"] == 128 + 128  # room for gVisor's own threads
    assert "runtime" not in create_kwargs(spec(runtime="runsc", network=NetworkPolicy.BRIDGE))
    assert "runtime" not in create_kwargs(spec(runtime="runsc", gpu_device_ids=("0",)))


def test_gpus_become_a_device_request_with_ids():
    kw = create_kwargs(spec(gpu_device_ids=("GPU-aaa", "GPU-bbb")))
    (request,) = kw["device_requests"]
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == ["GPU-aaa", "GPU-bbb"]
    assert request["Capabilities"] == [["gpu"]]
    assert kw["labels"]["hivemind.gpu_device_ids"] == "GPU-aaa,GPU-bbb"


def test_ca_bundle_is_mounted_read_only_and_announced():
    kw = create_kwargs(spec(ca_bundle=Path("/etc/ssl/certs/ca-certificates.crt")))
    ca = [m for m in kw["mounts"] if m["Target"] == CA_BUNDLE_PATH][0]
    assert ca["ReadOnly"] is True
    for key in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "HIVEMIND_CA_BUNDLE"):
        assert kw["environment"][key] == CA_BUNDLE_PATH


def test_relative_workspace_is_refused():
    with pytest.raises(ValueError):
        create_kwargs(spec(workspace=Path("ws")))


def test_container_name_is_valid():
    assert container_name("a/b c:d") == "hivemind-task-a-b-c-d"


def test_userns_remap_moves_the_workspace_owner_to_the_subordinate_id():
    from hivemind_worker.runtime.spec import host_user, userns_base

    plain = {"SecurityOptions": ["name=seccomp,profile=default"], "DockerRootDir": "/var/lib/docker"}
    remapped = {"SecurityOptions": ["name=seccomp,profile=default", "name=userns"],
                "DockerRootDir": "/var/lib/docker/165536.165536"}
    assert userns_base(plain) == 0 and userns_base(remapped) == 165536
    assert host_user("65100:65100", 0) == "65100:65100"
    assert host_user("65100:65100", 165536) == "230636:230636"
