"""A really full disk (a small tmpfs): the log spool stays a gapless prefix and says
why it dropped lines; the result archive drops the output, keeps the logs and the
exit record, and frees the workspace."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from hivemind_worker.tasks.disk import free_bytes
from hivemind_worker.tasks.logspool import LogSpool
from hivemind_worker.tasks.model import LogStream
from hivemind_worker.tasks.result import build_result
from hivemind_worker.tasks.workspace import TaskDirs

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
    assert [r.seq for r in spool.read(1, max_lines=1000)] == list(range(1, kept + 1))
    spool.add(LogStream.STDOUT, "after the error", 5000)  # dropped, never a gap
    assert spool.last_seq == kept
    filler.unlink()  # room again: the marker goes in
    spool.finish(6000)
    spool.close()
    again = LogSpool(small_fs / "logs.spool", max_bytes=10**9)
    marker = again.read(kept + 1)[0]
    assert marker.stream is LogStream.SYSTEM and marker.text.startswith("[hivemind] node disk full")
    assert f"dropped {400 - kept + 1} lines" in marker.text and again.finished
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
