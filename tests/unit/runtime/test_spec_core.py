"""Task containers never write core dumps (a dump holds the task's memory: its
secrets and inputs, as large as its memory limit)."""

from __future__ import annotations

from pathlib import Path

from hivemind_worker.runtime.spec import ContainerSpec, create_kwargs
from hivemind_worker.tasks.model import NetworkPolicy


def test_core_ulimit_is_zero_soft_and_hard():
    spec = ContainerSpec(
        task_id="t-1", node_id="n-1", image="img:1", command=(), env={}, workspace=Path("/w"),
        cpu_millicores=0, memory_bytes=0, pids_limit=64, gpu_device_ids=(), network=NetworkPolicy.NONE,
    )
    [core] = [u for u in create_kwargs(spec)["ulimits"] if u["Name"] == "core"]
    assert (core["Soft"], core["Hard"]) == (0, 0)
