"""Result archives: round trip, links never followed out, FIFOs skipped, size limit."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from hivemind_worker.errors import ResultError
from hivemind_worker.tasks.archive import make_result_archive


def test_round_trip(tmp_path: Path):
    out = tmp_path / "ws" / "output"
    (out / "sub").mkdir(parents=True)
    (out / "result.txt").write_text("42\n")
    (out / "sub" / "data.bin").write_bytes(os.urandom(100_000))
    (out / "alias.txt").symlink_to("result.txt")
    logs = tmp_path / "logs.txt"
    logs.write_text("line 1\nline 2\n")
    dest = tmp_path / "spool" / "result.tar.gz"

    size, digest = make_result_archive(out, logs, {"exit_code": 0, "reason": "exited"}, dest, 10 * 1024 * 1024)

    assert size == dest.stat().st_size
    assert digest == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert not dest.with_name(dest.name + ".part").exists()
    unpacked = tmp_path / "unpacked"
    with tarfile.open(dest) as tar:
        names = sorted(tar.getnames())
        tar.extractall(unpacked, filter="data")
    assert names == [
        "exit.json", "logs.txt", "output", "output/alias.txt", "output/result.txt", "output/sub", "output/sub/data.bin",
    ]
    assert (unpacked / "output" / "result.txt").read_text() == "42\n"
    assert (unpacked / "output" / "sub" / "data.bin").read_bytes() == (out / "sub" / "data.bin").read_bytes()
    assert os.readlink(unpacked / "output" / "alias.txt") == "result.txt"
    assert (unpacked / "logs.txt").read_text() == "line 1\nline 2\n"
    assert json.loads((unpacked / "exit.json").read_text()) == {"exit_code": 0, "reason": "exited"}


def test_never_follows_links_out_and_skips_special_files(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    out = tmp_path / "output"
    out.mkdir()
    (out / "steal").symlink_to(secret)
    (out / "stealdir").symlink_to("/etc")
    os.mkfifo(out / "pipe")  # reading it would block forever
    dest = tmp_path / "r.tar.gz"

    make_result_archive(out, None, {"exit_code": 1}, dest, 1024 * 1024)

    with tarfile.open(dest) as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile("exit.json").read())
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    assert "output/steal" not in names and "output/pipe" not in names and "output/stealdir" not in names
    assert b"host secret" not in blob
    assert len(record["skipped_from_output"]) == 3


def test_over_the_limit_fails_clearly_and_leaves_nothing(tmp_path: Path):
    out = tmp_path / "output"
    out.mkdir()
    (out / "noise.bin").write_bytes(os.urandom(200_000))  # incompressible
    dest = tmp_path / "r.tar.gz"
    with pytest.raises(ResultError, match="larger than the limit of 100000 bytes"):
        make_result_archive(out, None, {}, dest, 100_000)
    assert list(tmp_path.iterdir()) == [out]


def test_missing_output_dir_still_gives_logs_and_exit_record(tmp_path: Path):
    logs = tmp_path / "logs.txt"
    logs.write_text("only logs\n")
    dest = tmp_path / "r.tar.gz"
    make_result_archive(tmp_path / "nope", logs, {"exit_code": 137, "oom_killed": True}, dest, 1024 * 1024)
    with tarfile.open(dest) as tar:
        assert sorted(tar.getnames()) == ["exit.json", "logs.txt"]
