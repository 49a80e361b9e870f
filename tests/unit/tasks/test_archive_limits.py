"""The result archiver's read cap: files are charged by their size before they are
read, so a sparse 4 TiB file (no disk used, gzips to nothing) is refused at once
with its name and size, instead of the agent compressing a terabyte of zeros."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from hivemind_worker.errors import ResultError
from hivemind_worker.tasks.archive import READ_FACTOR, make_result_archive
from hivemind_worker.tasks.result import build_result
from hivemind_worker.tasks.workspace import TaskDirs

TIB = 1024**4


def sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    assert path.stat().st_blocks == 0  # really sparse: the test never fills the disk
    return path


def test_a_sparse_4_tib_file_is_refused_by_its_size_before_it_is_read(tmp_path: Path):
    out = tmp_path / "output"
    sparse(out / "x", 4 * TIB)
    dest = tmp_path / "result.tar.gz"
    t0 = time.monotonic()
    with pytest.raises(ResultError) as caught:
        make_result_archive(out, None, {"reason": "exited"}, dest, 1024**3)
    elapsed = time.monotonic() - t0
    message = str(caught.value)
    assert "'output/x' is 4398046511104 bytes" in message and "a sparse file counts whole" in message
    assert f"limit of {READ_FACTOR * 1024**3} uncompressed bytes" in message
    assert elapsed < 2.0, elapsed
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_the_cap_counts_all_files_together(tmp_path: Path):
    out = tmp_path / "output"
    out.mkdir()
    for name in ("a", "b", "c"):
        (out / name).write_bytes(b"z" * 400)
    with pytest.raises(ResultError, match=r"'output/c' is 400 bytes.*limit of 1000 uncompressed"):
        make_result_archive(out, None, {}, tmp_path / "r.tgz", 1024**2, max_read_bytes=1000)
    size, _ = make_result_archive(out, None, {}, tmp_path / "r.tgz", 1024**2, max_read_bytes=1200)
    assert size > 0


def test_a_task_that_leaves_a_sparse_file_fails_with_the_reason_and_its_logs(tmp_path: Path):
    dirs = TaskDirs(tmp_path / "tasks", "t-sparse")
    sparse(dirs.output / "x", 4 * TIB)
    (dirs.output / "fine.txt").write_text("kept out too: the output is one unit\n")
    spool = tmp_path / "spool"
    spool.write_bytes(b"1\to\t0\t1\t20\nwrote a sparse file\n")  # one record: header, then the text
    record = {"task_id": "t-sparse", "status": "exited", "reason": "exited with code 0"}
    t0 = time.monotonic()
    size, _, failure = build_result(dirs, spool, record, 1024**3)
    assert time.monotonic() - t0 < 2.0
    assert "result not delivered: 'output/x' is 4398046511104 bytes" in failure
    with tarfile.open(dirs.result) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert sorted(files) == ["exit.json", "logs.txt"] and files["logs.txt"] == b"wrote a sparse file\n"
    exit_json = json.loads(files["exit.json"])
    assert exit_json["status"] == "failed" and exit_json["output_dropped"] is True
    assert exit_json["reason"] == failure
    assert size == os.path.getsize(dirs.result)


def test_the_reason_quotes_a_hostile_file_name(tmp_path: Path):
    out = tmp_path / "output"
    sparse(out / "x\x1b[2J\n", TIB)
    with pytest.raises(ResultError) as caught:
        make_result_archive(out, None, {}, tmp_path / "r.tgz", 1024**2)
    assert "'output/x\\x1b[2J\\n' is 1099511627776 bytes" in str(caught.value)
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)
