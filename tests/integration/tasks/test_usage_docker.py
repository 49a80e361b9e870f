"""The usage meter against real containers: a task with known use (about 2 s of CPU
on one core, then about 200 MB held for a while) ends with figures in band on its
journal row, with the image id that ran; an agent restarted mid-task keeps what it
had measured and goes on measuring the re-attached container."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hivemind_worker.tasks.journal import Journal, TaskRow
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus
from hivemind_worker.tasks.usage import PERSIST_S
from tests.support.localhost import LocalTaskHost

pytestmark = pytest.mark.docker
MiB = 1024**2
LIMIT = 512 * MiB


def known_use(hold_s: float) -> tuple[str, ...]:
    code = (
        "import time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 2.0: pass\n"  # ~2 s of CPU on one core
        "b = b'x' * (200 << 20)\n"  # 200 MiB, every page touched
        f"time.sleep({hold_s})\n"
        "print(len(b))\n"
    )
    return ("python3", "-c", code)


def manager(settings, rt, host, node_id) -> TaskManager:
    m = TaskManager(settings, rt, host, node_id, capacity=Resources(2000, 2048 * MiB), sampler=None)
    host.manager = m
    return m


async def until(what, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while not (got := await what()):
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)
    return got


async def journal_row(settings, task_id: str) -> TaskRow | None:
    j = Journal(settings.state_dir / "journal.db", time.time)  # a second reader: WAL allows it
    await j.open()
    try:
        return await j.get(task_id)
    finally:
        await j.close()


def assert_known_use(row: TaskRow) -> None:
    print("measured:", row.task_id, row.usage.to_json() if row.usage else None, row.image_digest,
          "run_s", (row.ended_ms - row.started_ms) / 1000)
    u = row.usage
    assert u is not None, row
    assert 1.5 <= u.cpu_seconds <= 3.5, u
    assert 200 * MiB <= u.memory_peak_bytes < LIMIT, u
    assert 0 < u.memory_avg_bytes < u.memory_peak_bytes, u
    assert u.samples > 0 and u.gpus == ()
    assert row.image_digest.startswith("sha256:"), row.image_digest


async def test_known_use_measured(tmp_path: Path, settings, docker_runtime, node_id) -> None:
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    await m.assign(TaskRequest("t-use", command=known_use(2.0), resources=Resources(1000, LIMIT)))
    await until(lambda: asyncio.sleep(0, not m.held_tasks()), timeout=90)
    await m.close()
    assert host.statuses("t-use")[-1] is TaskStatus.DONE
    row = await journal_row(settings, "t-use")
    assert row is not None and row.exit_code == 0
    assert_known_use(row)
    # the engine agrees on the image that ran
    assert row.image_digest == docker_runtime._docker().images.get(settings.task_image).id


async def test_restart_mid_task_keeps_the_figures_and_resumes(tmp_path: Path, settings, docker_runtime,
                                                              node_id) -> None:
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    await m.assign(TaskRequest("t-restart", command=known_use(PERSIST_S + 6), resources=Resources(1000, LIMIT)))

    async def measured_and_holding():
        row = await journal_row(settings, "t-restart")
        return row if row and row.usage and row.usage.memory_peak_bytes >= 200 * MiB else None

    before = await until(measured_and_holding, timeout=60)
    await m.close()  # the agent stops; the container runs on
    assert before.status is TaskStatus.RUNNING
    m2 = manager(settings, docker_runtime, host, node_id)
    await m2.start()  # re-attaches the running container
    await until(lambda: asyncio.sleep(0, not m2.held_tasks()), timeout=90)
    await m2.close()
    after = await journal_row(settings, "t-restart")
    assert after is not None and after.status is TaskStatus.DONE and after.exit_code == 0
    assert_known_use(after)
    assert after.usage.samples > before.usage.samples  # sampling resumed
    assert after.usage.cpu_seconds >= before.usage.cpu_seconds
    assert after.image_digest == before.image_digest


async def test_found_by_pid_under_an_engine_parent_of_its_own(docker_client, task_image, node_id) -> None:
    """A container under a cgroup parent of its own (as a private engine or
    --cgroup-parent makes it): not under the usual names, found through its pid."""
    from hivemind_worker.tasks.usage import Meter

    c = docker_client.containers.run(task_image, ["sleep", "30"], detach=True, cgroup_parent="/hivemind-meter-test",
                                     labels={"hivemind.node_id": node_id}, mem_limit="64m")
    try:
        c.reload()
        meter = Meter("t-parent", None)
        assert not await asyncio.to_thread(meter.locate, 0, c.id)  # the usual names miss it
        assert await asyncio.to_thread(meter.locate, c.attrs["State"]["Pid"], c.id)
        assert await asyncio.to_thread(meter.sample)
        assert meter.usage is not None and 0 < meter.usage.memory_peak_bytes < 64 * MiB
    finally:
        c.remove(force=True)
