"""Bundle unpacking: well-formed bundles unpack; malicious ones are refused with
their reason and leave nothing behind, inside or outside the workspace."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from hivemind_worker.errors import BundleError
from hivemind_worker.tasks.bundle import unpack_bundle

LIMITS = dict(max_files=100, max_bytes=10 * 1024 * 1024)


def make_zip(path: Path, entries: list[tuple]) -> Path:
    """entries: (name, data) files, (name, target, "link") symlinks, (name,) directories."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            if len(entry) == 1:
                zf.writestr(zipfile.ZipInfo(entry[0] if entry[0].endswith("/") else entry[0] + "/"), b"")
            elif len(entry) == 3 and entry[2] == "link":
                info = zipfile.ZipInfo(entry[0])
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, entry[1])
            else:
                info = zipfile.ZipInfo(entry[0])
                info.external_attr = (stat.S_IFREG | (entry[2] if len(entry) > 2 else 0o644)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, entry[1])
    return path


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    """A workspace inside a sandbox directory: anything outside the workspace but
    inside the sandbox would be a write that escaped."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    return {"sandbox": sandbox, "ws": sandbox / "ws", "zip": tmp_path / "bundle.zip"}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_rejected(box: dict[str, Path], reason: str, **limits) -> BundleError:
    with pytest.raises(BundleError) as caught:
        unpack_bundle(box["zip"], box["ws"], **{**LIMITS, **limits})
    assert reason in str(caught.value), str(caught.value)
    assert files_under(box["sandbox"]) == [], "something was written (or left behind)"
    return caught.value


def test_unpacks_a_normal_bundle(box):
    make_zip(
        box["zip"],
        [
            ("main.py", b"print('hi')\n"),
            ("run.sh", b"echo hi\n", 0o755),
            ("data/",),
            ("data/input.csv", b"a,b\n1,2\n"),
            ("data/alias.csv", "input.csv", "link"),
            ("requirements.txt", b"numpy\n"),
        ],
    )
    result = unpack_bundle(box["zip"], box["ws"], **LIMITS)
    ws = box["ws"]
    assert (ws / "main.py").read_text() == "print('hi')\n"
    assert (ws / "data" / "input.csv").read_bytes() == b"a,b\n1,2\n"
    assert os.readlink(ws / "data" / "alias.csv") == "input.csv"
    assert (ws / "run.sh").stat().st_mode & 0o111
    assert not (ws / "main.py").stat().st_mode & 0o111
    assert result.files == 5
    assert files_under(box["sandbox"]) == [
        "ws", "ws/data", "ws/data/alias.csv", "ws/data/input.csv", "ws/main.py", "ws/requirements.txt", "ws/run.sh",
    ]


def test_refuses_bytes_that_are_not_a_zip(box):
    box["zip"].write_bytes(b"#!/bin/sh\nrm -rf /\n" * 10)
    assert_rejected(box, "not a zip file")


def test_refuses_path_traversal(box):
    make_zip(box["zip"], [("main.py", b"x"), ("../escaped.txt", b"gotcha")])
    assert_rejected(box, "path traversal")
    make_zip(box["zip"], [("a/../../escaped.txt", b"gotcha")])
    assert_rejected(box, "path traversal")


def test_refuses_absolute_paths(box):
    make_zip(box["zip"], [("main.py", b"x"), ("/tmp/escaped.txt", b"gotcha")])
    assert_rejected(box, "absolute path")


def test_refuses_a_link_pointing_outside(box):
    make_zip(box["zip"], [("main.py", b"x"), ("evil", "../../etc", "link")])
    assert_rejected(box, "points outside the workspace")
    make_zip(box["zip"], [("evil", "/etc/passwd", "link")])
    assert_rejected(box, "absolute target")


def test_refuses_chained_links_that_resolve_outside(box):
    # Each link looks harmless alone; together "z" is the workspace's parent.
    make_zip(box["zip"], [("main.py", b"x"), ("q", ".", "link"), ("z", "q/..", "link")])
    assert_rejected(box, "resolves outside the workspace")


def test_refuses_writing_through_a_link(box):
    make_zip(box["zip"], [("d", "sub", "link"), ("d/x.txt", b"through the link")])
    assert_rejected(box, "which is a file or a link")


def test_refuses_too_many_files(box):
    make_zip(box["zip"], [(f"f{i}.txt", b"x") for i in range(11)])
    assert_rejected(box, "more than the limit of 10 files", max_files=10)


def test_refuses_a_zip_bomb_by_declared_size(box):
    make_zip(box["zip"], [("zeros.bin", b"\0" * (2 * 1024 * 1024))])
    assert box["zip"].stat().st_size < 10_000  # tiny on the wire
    assert_rejected(box, "more than the limit of 1048576 bytes", max_bytes=1024 * 1024)


def lying_zip(path: Path, real_size: int, declared_size: int) -> None:
    """A zip whose headers claim a tiny file while the data inflates to much more."""
    data = b"\0" * real_size
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(data) + comp.flush()
    crc = zlib.crc32(data)
    name = b"bomb.bin"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(body), declared_size, len(name), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(body), declared_size, len(name), 0, 0, 0, 0,
        (stat.S_IFREG | 0o644) << 16, 0,
    )
    offset_cd = len(local) + len(name) + len(body)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), offset_cd, 0)
    path.write_bytes(local + name + body + central + name + end)


def test_refuses_a_zip_bomb_with_lying_sizes(box):
    lying_zip(box["zip"], real_size=3 * 1024 * 1024, declared_size=100)
    err = assert_rejected(box, "", max_bytes=1024 * 1024)
    assert "zip bomb" in str(err) or "corrupt" in str(err)


def test_refuses_duplicate_names(box):
    with zipfile.ZipFile(box["zip"], "w") as zf:
        zf.writestr("main.py", b"one")
        with pytest.warns(UserWarning):
            zf.writestr("main.py", b"two")
    assert_rejected(box, "twice")


def test_refuses_odd_names(box):
    make_zip(box["zip"], [("dir\\..\\evil.txt", b"x")])
    assert_rejected(box, "backslashes")
    make_zip(box["zip"], [("bad\x01name", b"x")])
    assert_rejected(box, "control characters")


def test_refuses_device_files(box):
    with zipfile.ZipFile(box["zip"], "w") as zf:
        info = zipfile.ZipInfo("fifo")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    assert_rejected(box, "special file")


def test_failure_keeps_an_existing_workspace_but_removes_what_it_wrote(box):
    box["ws"].mkdir()
    (box["ws"] / "keep.txt").write_text("mine")
    make_zip(box["zip"], [("a/b.txt", b"x"), ("z", "../..", "link")])
    with pytest.raises(BundleError):
        unpack_bundle(box["zip"], box["ws"], **LIMITS)
    assert files_under(box["sandbox"]) == ["ws", "ws/keep.txt"]


def test_an_empty_zip_is_fine(box):
    with zipfile.ZipFile(box["zip"], "w"):
        pass
    assert unpack_bundle(box["zip"], box["ws"], **LIMITS).files == 0
    assert box["ws"].is_dir()


def test_truncated_zip_is_refused(box):
    make_zip(box["zip"], [("main.py", b"print(1)\n" * 1000)])
    data = box["zip"].read_bytes()
    box["zip"].write_bytes(data[: len(data) // 2])
    assert_rejected(box, "not a zip file")


def test_in_memory_zip_helper_roundtrip(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "x")
    (tmp_path / "b.zip").write_bytes(buf.getvalue())
    assert unpack_bundle(tmp_path / "b.zip", tmp_path / "w", **LIMITS).bytes == 1
