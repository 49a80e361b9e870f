"""A really full disk (a small tmpfs): the log spool stays a gapless prefix and says
why it dropped lines; the result archive drops the output, keeps the logs and the
exit record, and frees the workspace."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import asyncio
from pathlib import Path

import pytest

from hivemind_worker.tasks.disk import free_bytes
from hivemind_worker.tasks.logspool import LogSpool
from hivemind_worker.tasks.model import LogStream
from hivemind_worker.tasks.result import build_result
from hivemind_worker.tasks.workspace import TaskDirs
from tests.unit.tasks.fakes import records

pytestmark = pytest.mark.root
KiB, MiB = 1024, 1024**2


@pytest.fixture
def small_fs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(fs: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free."""
    filler = fs / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free_bytes(fs) - leave))
    return filler


def test_spool_on_a_full_disk_keeps_a_gapless_prefix_and_says_why(small_fs: Path) -> None:
    filler = fill(small_fs, 64 * KiB)
    spool = LogSpool(small_fs / "logs.spool", max_bytes=10**9)
    line = "x" * 1000
    for i in range(400):  # ~400 KB: far more than fits
        spool.add(LogStream.STDOUT, f"{i} {line}", 1000 + i)
        if i % 10 == 9:
            spool.flush()
    spool.flush()
    assert spool.disk_error and spool.dropped_lines > 0
    kept = spool.flushed_seq
    assert 10 < kept < 400 and spool.last_seq == kept
    assert [r.seq for r in records(spool.read(1, max_lines=1000))] == list(range(1, kept + 1))
    spool.add(LogStream.STDOUT, "after the error", 5000)  # dropped, never a gap
    assert spool.last_seq == kept
    filler.unlink()  # room again: the marker goes in
    spool.finish(6000)
    spool.close()
    again = LogSpool(small_fs / "logs.spool", max_bytes=10**9)
    marker = records(again.read(kept + 1))[0]
    assert marker.stream is LogStream.SYSTEM and marker.text.startswith("[hivemind] node disk full")
    assert f"dropped {400 - kept + 1} lines" in marker.text and again.finished
    again.close()


def test_chunks_on_a_full_disk_are_dropped_whole_and_uncounted(small_fs: Path) -> None:
    """Chunks of several lines: the file is cut back to its last whole record and the
    per-stream counts (what a resumed read skips) stay those of the file."""
    filler = fill(small_fs, 64 * KiB)
    spool = LogSpool(small_fs / "logs.spool", max_bytes=10**9)
    for i in range(100):  # ~400 KB in chunks of 1-7 lines: far more than fits
        stream = LogStream.STDERR if i % 3 else LogStream.STDOUT
        spool.add_many([(stream, b"".join(b"%d.%d " % (i, j) + b"x" * 1000 + b"\n" for j in range(i % 7 + 1)), i)])
        if i % 4 == 3:
            spool.flush()
    spool.flush()
    kept = spool.flushed_seq
    assert spool.disk_error and 10 < kept < spool.last_seq + spool.dropped_lines
    lines = records(spool.read(1, max_lines=10**6, max_bytes=10**9))
    assert [r.seq for r in lines] == list(range(1, kept + 1))
    per_stream = {s: sum(r.stream is s for r in lines) for s in (LogStream.STDOUT, LogStream.STDERR)}
    assert spool.counts() == per_stream
    filler.unlink()
    spool.finish(6000)
    spool.close()
    again = LogSpool(small_fs / "logs.spool", max_bytes=10**9)
    assert again.counts() == per_stream and again.last_seq == kept + 1 and again.finished
    again.close()


def test_result_on_a_full_disk_drops_the_output_keeps_logs_and_record(small_fs: Path) -> None:
    dirs = TaskDirs(small_fs / "tasks", "t1")
    dirs.output.mkdir(parents=True)
    (dirs.output / "big.bin").write_bytes(os.urandom(int(2.5 * MiB)))  # incompressible
    spool = LogSpool(dirs.spool, max_bytes=10**9)
    for i in range(100):
        spool.add(LogStream.STDOUT, f"line {i}", 1000 + i)
    spool.finish(2000)
    fill(small_fs, 256 * KiB)
    record = {"task_id": "t1", "status": "exited", "exit_code": 0, "reason": "exited with code 0"}
    size, sha, failure = build_result(dirs, dirs.spool, record, 10**9)
    assert failure.startswith("node disk full: the result could not be written") and "output dropped" in failure
    assert "exited with code 0" in failure
    assert not dirs.workspace.exists()  # freed for what comes next
    with tarfile.open(dirs.result) as tar:
        names = tar.getnames()
        exit_json = json.loads(tar.extractfile("exit.json").read())
        logs = tar.extractfile("logs.txt").read().decode()
    assert not any(n.startswith("output/big") for n in names)
    assert exit_json["status"] == "failed" and exit_json["output_dropped"] and exit_json["reason"] == failure
    assert logs.splitlines()[:2] == ["line 0", "line 1"] and len(logs.splitlines()) == 100
    assert dirs.result.stat().st_size == size
    spool.close()


@pytest.mark.parametrize("leave", [1 * MiB, 64 * KiB], ids=["spool-full", "journal-full-too"])
async def test_a_node_disk_full_mid_task_settles_the_task_once_there_is_room(tmp_path: Path, monkeypatch,
                                                                              leave: int) -> None:
    """The log spool hits ENOSPC while the task prints, and the journal cannot take the
    outcome either: the daemon neither crashes nor spins; the task is stopped, ends
    FAILED "node disk full" once there is room, with the logs that fit; the next task runs."""
    from hivemind_worker.config import Settings
    from hivemind_worker.tasks import disk, runner
    from tests.support.localhost import LocalTaskHost
    from hivemind_worker.tasks.manager import TaskManager
    from hivemind_worker.tasks.model import TaskStatus
    from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script, request

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    monkeypatch.setattr(disk, "CHECK_S", 0.05)
    monkeypatch.setattr(runner, "RETRY_S", 0.1)
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], check=True)
    try:
        settings = Settings(state_dir=state, config_dir=tmp_path / "etc", task_timeout_s=60,
                            disk_min_free_bytes=0, disk_hard_min_free_bytes=0)
        rt, host = FakeRuntime(), LocalTaskHost(tmp_path / "results")
        m = TaskManager(settings, rt, host, "node-1", capacity=CAPACITY, sampler=None)
        host.manager = m
        await m.start()
        rt.scripts["t"] = Script(lines=[f"{i} " + "z" * 1000 for i in range(6000)], hang=True)
        filler = fill(state, leave)  # room for a few flushes of the spool at most, not for 6 MB of lines
        await m.assign(request("t"))
        deadline = asyncio.get_running_loop().time() + 30
        def stopped() -> bool:  # by its disk watch (or already delivered and removed)
            return not m.held_tasks() or (rt.has("t") and rt.by_task("t").started and not rt.by_task("t").running)

        while not stopped():
            assert asyncio.get_running_loop().time() < deadline, m.snapshot()
            await asyncio.sleep(0.02)
        filler.unlink()  # space is back
        while m.held_tasks():
            assert asyncio.get_running_loop().time() < deadline, m.snapshot()
            await asyncio.sleep(0.02)
        ev = host.final_event("t")
        assert ev.status is TaskStatus.FAILED and ev.reason.startswith("node disk full"), ev
        files = {}
        with tarfile.open(host.results["t"]) as tar:
            files = {n: tar.extractfile(n).read() for n in tar.getnames() if tar.getmember(n).isfile()}
        record = json.loads(files["exit.json"])
        assert record["reason"] == ev.reason and record["output_dropped"]
        # What fits: the logs when there was room for them (else the record says so).
        lines = files["logs.txt"].decode().splitlines() if "logs.txt" in files else []
        assert "logs.txt" in files or record["logs_dropped"]
        numbered = [line for line in lines if not line.startswith("[hivemind]")]
        assert [int(line.split()[0]) for line in numbered] == list(range(len(numbered)))  # a gapless prefix
        rt.scripts["next"] = Script(lines=["fine"])
        await m.assign(request("next"))
        while m.held_tasks():
            assert asyncio.get_running_loop().time() < deadline + 15, m.snapshot()
            await asyncio.sleep(0.02)
        assert host.final_event("next").status is TaskStatus.EXITED
        await m.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


async def test_no_room_for_a_new_tasks_files_ends_it_and_the_next_task_runs(tmp_path: Path, monkeypatch) -> None:
    """Out of inodes (ENOSPC at mkdir/open): the task ends FAILED "node disk full", is
    delivered once there is room, and the node takes the next task."""
    from hivemind_worker.config import Settings
    from hivemind_worker.tasks import runner
    from tests.support.localhost import LocalTaskHost
    from hivemind_worker.tasks.manager import TaskManager
    from hivemind_worker.tasks.model import TaskStatus
    from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script, request

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    monkeypatch.setattr(runner, "RETRY_S", 0.1)
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=64", "tmpfs", str(state)], check=True)
    try:
        settings = Settings(state_dir=state, config_dir=tmp_path / "etc", task_timeout_s=60,
                            disk_min_free_bytes=0, disk_hard_min_free_bytes=0)
        rt, host = FakeRuntime(), LocalTaskHost(tmp_path / "results")
        m = TaskManager(settings, rt, host, "node-1", capacity=CAPACITY, sampler=None)
        host.manager = m
        await m.start()
        await m.assign(request("warm"))  # the journal's files exist before the inodes run out
        deadline = asyncio.get_running_loop().time() + 30
        while m.held_tasks():
            assert asyncio.get_running_loop().time() < deadline, m.snapshot()
            await asyncio.sleep(0.02)
        fillers = state / "fillers"
        fillers.mkdir()
        with pytest.raises(OSError):
            for i in range(1000):
                (fillers / str(i)).touch()
        await m.assign(request("t"))
        while host.final_event("t") is None:
            assert asyncio.get_running_loop().time() < deadline, m.snapshot()
            await asyncio.sleep(0.02)
        ev = host.final_event("t")
        assert ev.status is TaskStatus.FAILED and ev.reason.startswith("node disk full while accepted"), ev
        assert ev.reason.endswith("task not run"), ev
        assert "No space left on device" in ev.reason and not rt.has("t")
        for path in fillers.iterdir():  # room again: the outcome is delivered
            path.unlink()
        while m.held_tasks():
            assert asyncio.get_running_loop().time() < deadline, m.snapshot()
            await asyncio.sleep(0.02)
        assert host.uploads.get("t") == 1
        rt.scripts["next"] = Script(lines=["fine"])
        await m.assign(request("next"))
        while m.held_tasks():
            assert asyncio.get_running_loop().time() < deadline + 15, m.snapshot()
            await asyncio.sleep(0.02)
        assert host.final_event("next").status is TaskStatus.EXITED
        await m.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)
