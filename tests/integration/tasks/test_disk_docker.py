"""Disk limits and a full disk, for real: the real task image on the real Docker
engine, the worker's state directory on a small tmpfs (96 MiB).

- a task that writes far more than the node has is stopped ("node disk full"), its
  workspace is freed, its logs and exit record still arrive, and the next task runs;
- a task over its own budget is killed ("disk limit: ... of its 20 MiB ...");
- below the low-water mark the node defers tasks, and admits them again once there
  is room;
- a bundle that does not fit ends its task ("node disk full while fetching").
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from hivemind_worker.tasks.disk import disk_gate, free_bytes
from tests.support.localhost import LocalTaskHost, sha256_file
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus

pytestmark = [pytest.mark.docker, pytest.mark.root]
S = TaskStatus
MiB = 1024**2

FILL = """
import os, time
path = os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "fill.bin")
block, written = b"\\1" * (1024 * 1024), 0
with open(path, "wb") as fh:
    while written < 400 * 1024 * 1024:
        try:
            fh.write(block); fh.flush(); written += len(block)
        except OSError as exc:
            print("write failed:", exc, flush=True); time.sleep(0.2)
        if written % (10 * 1024 * 1024) == 0:
            print("written", written // (1024 * 1024), "MiB", flush=True)
print("done", flush=True)
"""

SLOW_WRITER = """
import os, time
out = os.environ["HIVEMIND_OUTPUT_DIR"]
for i in range(60):
    with open(os.path.join(out, f"part{i}.bin"), "wb") as fh:
        fh.write(b"\\0" * (5 * 1024 * 1024))
    print("part", i, flush=True)
    time.sleep(0.2)
time.sleep(120)
"""

OK = "import os; open(os.path.join(os.environ['HIVEMIND_OUTPUT_DIR'], 'ok.txt'), 'w').write('fine'); print('ok')"


@pytest.fixture
def small_state(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(state)], check=True)
    yield state
    subprocess.run(["umount", "-l", str(state)], check=True)


def disk_settings(state: Path, task_image: str, tmp_path: Path, **kw) -> Settings:
    kw.setdefault("disk_min_free_bytes", 16 * MiB)
    kw.setdefault("disk_hard_min_free_bytes", 8 * MiB)
    return Settings(state_dir=state, config_dir=tmp_path / "etc", task_image=task_image, task_timeout_s=120, **kw)


def manager(settings: Settings, rt, host: LocalTaskHost, node_id: str) -> TaskManager:
    m = TaskManager(settings, rt, host, node_id, capacity=Resources(2000, 2048 * MiB), sampler=None,
                    disk_gate=disk_gate(settings))
    host.manager = m
    return m


def task(task_id: str, code: str, **kw) -> TaskRequest:
    return TaskRequest(task_id, command=("python3", "-c", code), resources=Resources(500, 256 * MiB), **kw)


async def settled(m: TaskManager, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while m.held_tasks():
        assert time.monotonic() < end, m.snapshot()
        await asyncio.sleep(0.1)


def result_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


async def test_a_task_filling_the_node_disk_is_stopped_and_the_next_task_runs(
        tmp_path, small_state, task_image, docker_runtime, node_id) -> None:
    settings = disk_settings(small_state, task_image, tmp_path, task_disk_limit_bytes=1024**3)
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    started = time.monotonic()
    await m.assign(task("t-fill", FILL))
    await settled(m)
    took = time.monotonic() - started
    ev = host.final_event("t-fill")
    assert ev.status is S.FAILED and ev.reason.startswith("node disk full"), ev
    files = result_files(host.results["t-fill"])
    record = json.loads(files["exit.json"])
    assert record["status"] == "failed" and record["reason"].startswith("node disk full")
    assert "output/fill.bin" not in files  # dropped: it is what filled the disk
    assert "written 10 MiB" in files["logs.txt"].decode()
    assert free_bytes(small_state) > 80 * MiB, "the task's workspace was not freed"
    assert not (small_state / "tasks" / "t-fill").exists()
    print(f"\nfill stopped and delivered in {took:.1f} s: {ev.reason}")

    await m.assign(task("t-next", OK))
    await settled(m)
    assert host.final_event("t-next").status is S.EXITED and host.final_event("t-next").exit_code == 0
    assert result_files(host.results["t-next"])["output/ok.txt"] == b"fine"
    await m.close()


async def test_a_task_over_its_disk_budget_is_killed(tmp_path, settings, docker_runtime, node_id) -> None:
    from hivemind_worker.config import replace

    settings = replace(settings, task_disk_limit_bytes=20 * MiB)
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    started = time.monotonic()
    await m.assign(task("t-budget", SLOW_WRITER))
    await settled(m)
    ev = host.final_event("t-budget")
    assert ev.status is S.FAILED and ev.reason.startswith("disk limit: the task used "), ev
    assert "of its 20 MiB disk budget" in ev.reason
    assert time.monotonic() - started < 60  # killed, not left to run its 120 s sleep
    record = json.loads(result_files(host.results["t-budget"])["exit.json"])
    assert record["reason"].startswith("disk limit")
    await m.close()


async def test_below_low_water_the_node_defers_then_admits_again(
        tmp_path, small_state, task_image, docker_runtime, node_id) -> None:
    settings = disk_settings(small_state, task_image, tmp_path, disk_min_free_bytes=32 * MiB)
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    filler = small_state / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (free_bytes(small_state) - 20 * MiB))
    await m.assign(task("t-low", OK))
    ev = host.last_event("t-low")
    assert ev.status is S.DEFERRED and ev.reason.startswith("node low on disk ("), ev
    assert "disk_min_free_bytes" in ev.reason and not m.held_tasks()
    filler.unlink()
    await m.assign(task("t-low", OK))
    await settled(m)
    assert host.final_event("t-low").status is S.EXITED
    await m.close()


async def test_a_bundle_that_does_not_fit_ends_its_task(
        tmp_path, small_state, task_image, docker_runtime, node_id) -> None:
    bundle = tmp_path / "big.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("main.py", "print('never')")
        zf.writestr("data.bin", os.urandom(24 * MiB))
    packed = tmp_path / "packed.zip"  # small as a zip, 40 MiB unpacked
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("main.py", "print('never')")
        zf.writestr("zeros.bin", bytes(40 * MiB))
    settings = disk_settings(small_state, task_image, tmp_path, disk_min_free_bytes=4 * MiB,
                             disk_hard_min_free_bytes=0)
    host = LocalTaskHost(tmp_path / "results", {"t-big": bundle, "t-packed": packed})
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    filler = small_state / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (free_bytes(small_state) - 10 * MiB))
    await m.assign(TaskRequest("t-big", resources=Resources(500, 256 * MiB), bundle_size=bundle.stat().st_size,
                               bundle_sha256=sha256_file(bundle)))
    await settled(m)
    ev = host.final_event("t-big")
    assert ev.status is S.FAILED and ev.reason.startswith("node disk full while fetching"), ev
    assert not (small_state / "tasks" / "t-big").exists()
    await m.assign(TaskRequest("t-packed", resources=Resources(500, 256 * MiB), bundle_size=packed.stat().st_size,
                               bundle_sha256=sha256_file(packed)))
    await settled(m)
    ev = host.final_event("t-packed")  # downloaded, but unpacking it fills the disk
    assert ev.status is S.FAILED and ev.reason.startswith("node disk full while fetching"), ev
    assert "No space left on device" in ev.reason and not (small_state / "tasks" / "t-packed").exists()
    filler.unlink()
    await m.assign(task("t-after", OK))
    await settled(m)
    assert host.final_event("t-after").status is S.EXITED
    await m.close()


BIG_WRITER = """
import os, time
out = os.environ["HIVEMIND_OUTPUT_DIR"]
for i in range(16):
    with open(os.path.join(out, f"part{i}.bin"), "wb") as fh:
        fh.write(os.urandom(5 * 1024 * 1024))
    print("part", i, flush=True)
    time.sleep(0.3)
time.sleep(120)
"""
SMALL_WRITER = ("import os, time; open(os.path.join(os.environ['HIVEMIND_OUTPUT_DIR'], 'small.bin'), 'wb')"
                ".write(os.urandom(1024 * 1024)); time.sleep(15); print('small done')")


async def test_below_the_hard_mark_the_largest_writer_is_stopped(
        tmp_path, small_state, task_image, docker_runtime, node_id) -> None:
    settings = disk_settings(small_state, task_image, tmp_path, task_disk_limit_bytes=1024**3,
                             disk_min_free_bytes=48 * MiB, disk_hard_min_free_bytes=40 * MiB)
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    await m.assign(task("t-small", SMALL_WRITER))
    await m.assign(task("t-big", BIG_WRITER))
    await settled(m, 120)
    big, small = host.final_event("t-big"), host.final_event("t-small")
    assert big.status is S.FAILED and big.reason.startswith("node disk full: "), big
    assert "below disk_hard_min_free_bytes, 40 MiB" in big.reason and "largest writer" in big.reason
    assert (small.status, small.exit_code) == (S.EXITED, 0), small
    assert result_files(host.results["t-small"])["output/small.bin"].__len__() == MiB
    await m.close()
