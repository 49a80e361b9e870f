"""Task containers on the real Docker engine: limits, isolation, hardening, OOM,
pids limit, GPU requests, logs, lifecycle calls."""

from __future__ import annotations


import asyncio
import dataclasses
import threading
import time

import docker
import pytest

from hivemind_worker.errors import RuntimeUnavailable, TaskError, TaskRejected
from hivemind_worker.runtime import DockerRuntime, GpuAllocator, GpuDevice, StaticGpuInventory
from hivemind_worker.tasks.model import LogStream, NetworkPolicy

from .conftest import lines_of, run_to_end

pytestmark = pytest.mark.docker

PY = "python3"


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


async def test_limits_are_visible_inside(runtime, make_spec):
    script = (
        "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max;"
        " else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        " /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/pids/pids.max; fi"
    )
    ran = await run_to_end(runtime, make_spec(command=sh(script), cpu_millicores=500, memory_bytes=200 * 2**20, pids_limit=50))
    values = ran.text().split()
    assert ran.exit.exit_code == 0, ran.text()
    if len(values) == 4:  # cgroup v1: limit, quota, period, pids
        assert values == [str(200 * 2**20), "50000", "100000", "50"]
    else:  # cgroup v2: "limit", "quota period", "pids"
        assert values == [str(200 * 2**20), "50000", "100000", "50"]


async def test_no_network_under_the_default_policy(runtime, make_spec):
    probe = (
        "import os, socket\n"
        "print('ifaces', sorted(os.listdir('/sys/class/net')))\n"
        "try:\n"
        "    socket.create_connection(('172.17.0.1', 2375), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    ran = await run_to_end(runtime, make_spec(command=(PY, "-c", probe)))
    assert "ifaces ['lo']" in ran.text()
    assert "connected" not in ran.text() and "refused" in ran.text()


async def test_hardening_inside_the_container(runtime, make_spec, workspace):
    script = (
        "id -u; id -g;"
        " grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status;"
        " touch /etc/evil 2>/dev/null && echo wrote-etc || echo no-etc;"
        " touch /usr/local/bin/evil 2>/dev/null && echo wrote-usr || echo no-usr;"
        " touch /workspace/ok && echo wrote-workspace;"
        " touch /tmp/ok && echo wrote-tmp;"
        " echo out > $HIVEMIND_OUTPUT_DIR/result.txt && echo wrote-output;"
        " ls /var/run/docker.sock 2>/dev/null || echo no-docker-socket"
    )
    ran = await run_to_end(runtime, make_spec(command=sh(script)))
    out = ran.text().split("\n")
    assert out[:2] == ["65100", "65100"], out  # spec.DEFAULT_TASK_USER: no host account's
    assert "CapEff:\t0000000000000000" in out
    assert "CapBnd:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    for expected in ("no-etc", "no-usr", "wrote-workspace", "wrote-tmp", "wrote-output", "no-docker-socket"):
        assert expected in out, out
    assert (workspace / "ok").exists()
    assert (workspace / "output" / "result.txt").read_text() == "out\n"


async def test_fork_bomb_is_stopped_by_the_pids_limit(runtime, make_spec):
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('fork refused after', n, e.strerror, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
    )
    started = time.monotonic()
    ran = await run_to_end(runtime, make_spec(command=(PY, "-c", bomb), pids_limit=32))
    line = [l for _, l, _ in ran.lines if l.startswith("fork refused")][0]
    assert int(line.split()[3]) < 32
    assert ran.exit.exit_code == 0
    assert time.monotonic() - started < 30  # the container ends with its main process


async def test_a_shell_fork_bomb_stays_inside_the_pids_limit(runtime, make_spec):
    spec = make_spec(command=("bash", "-c", "sleep 300 & bomb() { bomb | bomb & }; bomb; wait"), pids_limit=32, cpu_millicores=500)
    cid = await runtime.create(spec)
    try:
        await runtime.start(cid)
        await asyncio.sleep(2)
        stats = await runtime.stats(cid)
        assert stats is not None and 0 < stats.pids <= 32
        await runtime.kill(cid)
        exit_info = await asyncio.wait_for(runtime.wait(cid), 30)
        assert exit_info.exit_code == 137 and not exit_info.oom_killed
    finally:
        await runtime.remove(cid)


async def test_out_of_memory_is_detected(runtime, make_spec):
    hog = "b = bytearray(400 * 1024 * 1024)\nprint('survived')"
    ran = await run_to_end(runtime, make_spec(command=(PY, "-c", hog), memory_bytes=128 * 2**20))
    assert ran.exit.exit_code == 137
    assert ran.exit.oom_killed is True
    assert "survived" not in ran.text()


async def test_gpu_request_is_stored_with_device_ids(docker_client, make_spec):
    inventory = StaticGpuInventory(
        [GpuDevice(i, f"GPU-fake-{i}", "Fake GPU", 16 * 2**30) for i in range(4)], nvidia_runtime=True
    )
    rt = DockerRuntime(client_factory=docker.from_env, gpu_inventory=inventory)
    allocator = GpuAllocator(await rt.gpu_inventory())
    ids = allocator.allocate("gpu-task", 2)
    cid = await rt.create(make_spec(gpu_device_ids=ids, command=sh("nvidia-smi")))
    try:
        host = docker_client.api.inspect_container(cid)["HostConfig"]
        (request,) = host["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == ["GPU-fake-0", "GPU-fake-1"]
        assert request["Capabilities"] == [["gpu"]]
        info = await rt.inspect(cid)
        assert info.gpu_device_ids == ids
        # No NVIDIA runtime on this machine: starting fails, and nothing runs instead.
        with pytest.raises(TaskError, match="nvidia"):
            await rt.start(cid)
        assert docker_client.api.inspect_container(cid)["State"]["StartedAt"].startswith("0001-")
    finally:
        await rt.remove(cid)
        rt.close()
    allocator.release("gpu-task")
    assert allocator.free == 4


async def test_this_node_has_no_gpus_so_gpu_tasks_are_rejected(runtime):
    inventory = await runtime.gpu_inventory()
    if inventory.devices():
        pytest.skip("this machine has GPUs")
    with pytest.raises(TaskRejected, match="no GPUs|no NVIDIA runtime"):
        GpuAllocator(inventory).allocate("gpu-task", 1)


async def test_follow_logs_gets_every_line_in_order_quickly(runtime, make_spec):
    n = 100_000
    script = f"import sys\nw = sys.stdout.write\nfor i in range({n}): w(f'line {{i}}\\n')\nprint('bye', file=sys.stderr)"
    started = time.monotonic()
    ran = await run_to_end(runtime, make_spec(command=(PY, "-c", script)), timeout=120)
    elapsed = time.monotonic() - started
    out = [l for s, l, _ in ran.lines if s is LogStream.STDOUT]
    assert out == [f"line {i}" for i in range(n)]
    assert [l for s, l, _ in ran.lines if s is LogStream.STDERR] == ["bye"]
    times = [t for _, _, t in ran.lines]
    assert abs(times[0] - time.time() * 1000) < 120_000
    print(f"\n{n} lines in {elapsed:.2f} s including container start ({n / elapsed:,.0f} lines/s)")
    assert elapsed < 60


async def test_follow_logs_since_skips_earlier_lines(runtime, make_spec):
    spec = make_spec(command=sh("echo first; sleep 1.5; echo second"))
    ran = await run_to_end(runtime, spec, remove=False)
    try:
        # The engine's own time of the line (the live read stamps its read time instead).
        second_ms = [t async for batch in runtime.follow_logs(ran.container_id, since_s=0.0)
                     for _, l, t in lines_of(batch) if l == "second"][0]
        again = [l async for batch in runtime.follow_logs(ran.container_id, since_s=(second_ms - 200) / 1000)
                 for _, l, _ in lines_of(batch)]
        assert again == ["second"]
        # since is inclusive at the line's own millisecond (what a re-attach resumes from)
        exact = [l async for batch in runtime.follow_logs(ran.container_id, since_s=second_ms / 1000)
                 for _, l, _ in lines_of(batch)]
        assert exact == ["second"]
    finally:
        await runtime.remove(ran.container_id)


async def test_leaving_a_log_stream_early_stops_its_thread(runtime, make_spec):
    cid = await runtime.create(make_spec(command=sh("echo first; sleep 300")))
    await runtime.start(cid)
    async for batch in runtime.follow_logs(cid):
        assert batch[0][1] == b"first\n"
        break
    for _ in range(50):
        if not [t for t in threading.enumerate() if t.name.startswith("hivemind-logs-")]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the log thread of an abandoned stream is still running")
    await runtime.remove(cid)


async def test_kill_wait_remove_are_idempotent_and_list_managed_sees_the_task(runtime, make_spec):
    spec = make_spec(command=sh("echo up; sleep 300"))
    cid = await runtime.create(spec)
    await runtime.start(cid)
    waiter = asyncio.ensure_future(runtime.wait(cid))
    listed = {c.task_id: c for c in await runtime.list_managed()}
    assert listed[spec.task_id].running and listed[spec.task_id].exit_code is None
    assert listed[spec.task_id].container_id == cid

    await runtime.set_cpu_shares(cid, 256)
    assert runtime._docker().api.inspect_container(cid)["HostConfig"]["CpuShares"] == 256
    stats = await runtime.stats(cid)
    assert stats is not None and stats.memory_bytes > 0 and stats.pids >= 1

    await runtime.kill(cid)
    exit_info = await asyncio.wait_for(waiter, 30)
    assert exit_info.exit_code == 137 and not exit_info.oom_killed
    await runtime.kill(cid)  # not running: fine
    info = await runtime.inspect(cid)
    assert info is not None and not info.running and info.exit_code == 137
    await runtime.remove(cid)
    await runtime.remove(cid)  # gone: fine
    await runtime.kill(cid)  # gone: fine
    assert await runtime.inspect(cid) is None
    assert spec.task_id not in {c.task_id for c in await runtime.list_managed()}
    assert await runtime.stats(cid) is None


async def test_created_but_never_started_has_no_exit_code(runtime, make_spec):
    spec = make_spec(command=sh("true"))
    cid = await runtime.create(spec)
    info = await runtime.inspect(cid)
    assert info.running is False and info.exit_code is None and info.started_at_ms == 0
    await runtime.remove(cid)


async def test_a_stopped_container_of_an_earlier_attempt_is_replaced_a_running_one_is_not(runtime, make_spec):
    spec = make_spec(command=sh("sleep 30"))
    old = await runtime.create(spec)  # left behind, never started (an engine that was away)
    cid = await runtime.create(spec)
    try:
        assert cid != old and await runtime.inspect(old) is None
        await runtime.start(cid)
        with pytest.raises(TaskError, match="already exists"):
            await runtime.create(spec)
        assert (await runtime.inspect(cid)).running
        other_node = dataclasses.replace(spec, node_id="node-someone-else")
        await runtime.kill(cid)
        with pytest.raises(TaskError, match="already exists"):
            await runtime.create(other_node)
    finally:
        await runtime.remove(cid)


async def test_bridge_network_when_the_policy_allows(runtime, make_spec):
    probe = "import os; print(sorted(os.listdir('/sys/class/net')))"
    ran = await run_to_end(runtime, make_spec(command=(PY, "-c", probe), network=NetworkPolicy.BRIDGE))
    assert "eth0" in ran.text()


async def test_docker_unreachable_is_runtime_unavailable():
    rt = DockerRuntime(client_factory=lambda: docker.DockerClient(base_url="unix:///nonexistent/docker.sock"))
    with pytest.raises(RuntimeUnavailable, match="start the Docker engine"):
        await rt.version()


async def test_images(runtime, task_image):
    assert await runtime.has_image(task_image)
    assert not await runtime.has_image("hivemind-no-such-image:never")
    seen: list[str] = []
    with pytest.raises(TaskError, match="pull image 127.0.0.1:1/nope"):
        await runtime.pull("127.0.0.1:1/nope:latest", seen.append)
    assert (await runtime.version()).split(".")[0].isdigit()
