"""The result archive's own gzip stream: text deflated, random bytes stored, the two
mixed within one file and across block edges, and the whole still one valid gzip
member that gzip, tar and tarfile read back byte for byte, hashed in the same pass."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

from hivemind_worker.tasks.archive import BLOCK_BYTES, make_result_archive

MIB = 1024**2


def text(size: int) -> bytes:
    line = b"0001234,sensor,alpha,42.5,ok\n"
    return (line * (size // len(line) + 1))[:size]


def test_random_output_is_stored_not_deflated(tmp_path: Path):
    out = tmp_path / "output"
    out.mkdir()
    (out / "r.bin").write_bytes(os.urandom(8 * MIB))
    size, _ = make_result_archive(out, None, {}, tmp_path / "r.tar.gz", 64 * MIB)
    # Stored blocks cost 5 bytes per 64 KiB: no deflate output for random bytes.
    assert 8 * MIB < size < 8 * MIB + 8 * 1024, size


def test_text_output_is_deflated(tmp_path: Path):
    out = tmp_path / "output"
    out.mkdir()
    (out / "t.csv").write_bytes(text(8 * MIB))
    size, _ = make_result_archive(out, None, {}, tmp_path / "t.tar.gz", 64 * MIB)
    assert size < MIB // 4, size


def test_a_mixed_output_reads_back_whole_with_gzip_tar_and_tarfile(tmp_path: Path):
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    files = {
        "a.txt": text(3 * MIB + 17),
        "r.bin": os.urandom(2 * MIB + 5),
        # Switches from stored to deflated and back inside one file, off the block edges.
        "sub/mixed.bin": (os.urandom(BLOCK_BYTES // 3) + text(BLOCK_BYTES + 99)) * 4 + os.urandom(70_000),
        "empty": b"",
        "tiny": b"x",
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    logs = tmp_path / "logs.txt"
    logs.write_text("a line\n")
    dest = tmp_path / "result.tar.gz"
    size, sha = make_result_archive(out, logs, {"reason": "exited"}, dest, 64 * MIB)
    raw = dest.read_bytes()
    assert (size, sha) == (len(raw), hashlib.sha256(raw).hexdigest())
    subprocess.run(["gzip", "-t", str(dest)], check=True)
    assert len(gzip.decompress(raw)) % 512 == 0  # one member, a whole tar stream
    with tarfile.open(dest) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert got.pop("logs.txt") == b"a line\n" and "exit.json" in got
    assert {k.removeprefix("output/"): v for k, v in got.items() if k.startswith("output/")} == files
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "xzf", str(dest), "-C", str(unpacked)], check=True)
    assert all((unpacked / "output" / name).read_bytes() == data for name, data in files.items())
