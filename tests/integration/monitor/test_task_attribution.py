"""Per-task attribution against a real container: a busy loop under --cpus 0.5 reads
as ~50 % of one core, a known allocation as that much memory, and direct writes as
block I/O - read from the container's cgroup files and from Docker's own stats."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from hivemind_worker.telemetry.containers import CgroupReader, TaskUsageTracker, counters_from_docker_stats

pytestmark = pytest.mark.docker
MiB = 2**20
PROGRAM = r"""
import os, sys
block = bytearray(b"\x01") * (120 * 1024 * 1024)   # written, so every page is resident
fd = os.open("/var/tmp/io", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
buf = memoryview(bytearray(b"\x02") * (1024 * 1024))
import mmap; aligned = mmap.mmap(-1, 1024 * 1024); aligned.write(bytes(buf))
for _ in range(16):
    os.write(fd, aligned)
os.close(fd)
print("ready", flush=True)
while True:
    pass
"""


def _wait_ready(container, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b"ready" in container.logs():
            return
        container.reload()
        assert container.status in ("created", "running"), container.logs()
        time.sleep(0.2)
    raise AssertionError("container never got ready: " + container.logs().decode(errors="replace"))


@pytest.fixture(scope="module")
def burner(docker_client, task_image):
    container = docker_client.containers.run(
        task_image, ["python3", "-c", PROGRAM], detach=True, nano_cpus=500_000_000, mem_limit="256m",
        network_mode="none", labels={"hivemind.test": "telemetry-attribution"},
    )
    try:
        _wait_ready(container)
        yield container
    finally:
        container.remove(force=True)


def test_cpu_memory_io_of_a_real_container(burner):
    reader = CgroupReader()
    if reader(burner.id) is None:
        pytest.skip("the container's cgroup is not visible under /sys/fs/cgroup from here")
    burner.reload()
    proc = psutil.Process(burner.attrs["State"]["Pid"])  # the busy loop, seen from the host
    tracker = TaskUsageTracker(reader)
    tracker.usage({"t1": burner.id})
    c0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(4)
    (u,) = tracker.usage({"t1": burner.id})
    c1, t1 = proc.cpu_times(), time.monotonic()
    truth = ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0) * 100
    # Attribution must match what the kernel charged the process, and respect the
    # --cpus 0.5 quota (50 ms per 100 ms). On an idle machine the loop gets all of it;
    # on a crowded one (this 2-core machine is shared) it may get less.
    assert abs(u.cpu_percent - truth) < 6, (u.cpu_percent, truth)
    assert 20 < u.cpu_percent <= 56, u
    if os.getloadavg()[0] < (os.cpu_count() or 1) - 0.5:
        assert u.cpu_percent >= 40, u
    assert 120 * MiB <= u.memory_bytes <= 170 * MiB, u  # 120 MiB block + the interpreter
    assert u.memory_limit_bytes == 256 * MiB


def test_block_io_of_a_real_container(burner):
    if CgroupReader()(burner.id) is None:
        pytest.skip("the container's cgroup is not visible under /sys/fs/cgroup from here")
    (u,) = TaskUsageTracker(CgroupReader()).usage({"t1": burner.id})
    assert u.io_write_bytes is not None and u.io_read_bytes is not None
    docker_view = counters_from_docker_stats(burner.stats(stream=False))
    if docker_view.io_write_bytes:  # the kernel accounts block I/O: the 16 MiB must show
        assert u.io_write_bytes >= 16 * MiB, (u.io_write_bytes, docker_view.io_write_bytes)
    else:
        # Some kernels (CI's machines among them) account no block I/O to containers;
        # then we must agree with Docker's own figure rather than invent one.
        assert u.io_write_bytes == docker_view.io_write_bytes == 0


def test_docker_stats_agree_with_cgroup_files(burner):
    stats = burner.stats(stream=False)
    from_docker = counters_from_docker_stats(stats)
    from_cgroup = CgroupReader()(burner.id)
    if from_cgroup is None:
        pytest.skip("the container's cgroup is not visible under /sys/fs/cgroup from here")
    assert from_docker.memory_limit_bytes == from_cgroup.memory_limit_bytes == 256 * MiB
    assert abs(from_docker.memory_bytes - from_cgroup.memory_bytes) < 8 * MiB
    assert from_cgroup.cpu_ns >= from_docker.cpu_ns > 0
