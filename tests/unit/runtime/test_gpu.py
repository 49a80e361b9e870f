"""GPU allocation among concurrent tasks, through a hand-written inventory."""

from __future__ import annotations

import pytest

from hivemind_worker.errors import TaskRejected
from hivemind_worker.runtime.gpu import GpuAllocator, GpuDevice, StaticGpuInventory


def devices(n: int) -> list[GpuDevice]:
    return [GpuDevice(index=i, uuid=f"GPU-{i:04d}", name="Fake A100", memory_bytes=80 * 2**30) for i in range(n)]


def test_allocations_are_exclusive_and_freed():
    alloc = GpuAllocator(StaticGpuInventory(devices(4)))
    a = alloc.allocate("a", 2)
    b = alloc.allocate("b", 1)
    assert len(a) == 2 and len(b) == 1 and not set(a) & set(b)
    assert alloc.free == 1
    with pytest.raises(TaskRejected, match="only 1 of 4 are free"):
        alloc.allocate("c", 2)
    alloc.release("a")
    c = alloc.allocate("c", 2)
    assert not set(c) & set(b)
    assert alloc.allocate("c", 2) == c  # idempotent
    assert alloc.free == 1


def test_no_gpus_on_the_node():
    with pytest.raises(TaskRejected, match="has no GPUs"):
        GpuAllocator(StaticGpuInventory([])).allocate("a", 1)


def test_no_nvidia_runtime():
    alloc = GpuAllocator(StaticGpuInventory(devices(2), nvidia_runtime=False))
    assert alloc.total == 0
    with pytest.raises(TaskRejected, match="no NVIDIA runtime"):
        alloc.allocate("a", 1)


def test_more_than_the_node_has_is_rejected_not_clamped():
    with pytest.raises(TaskRejected, match="has only 2"):
        GpuAllocator(StaticGpuInventory(devices(2))).allocate("a", 3)


def test_max_gpus_setting_limits_the_pool():
    alloc = GpuAllocator(StaticGpuInventory(devices(4)), max_gpus=1)
    assert alloc.total == 1
    assert alloc.allocate("a", 1) == ("GPU-0000",)


def test_restore_after_restart_keeps_devices_taken():
    alloc = GpuAllocator(StaticGpuInventory(devices(2)))
    alloc.restore("running", ("GPU-0000",))
    assert alloc.allocate("new", 1) == ("GPU-0001",)
    assert alloc.free == 0


def test_zero_gpus_needs_nothing():
    assert GpuAllocator(StaticGpuInventory([], nvidia_runtime=False)).allocate("a", 0) == ()
