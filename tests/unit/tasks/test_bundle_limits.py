"""Bundles that list millions of entries are refused from their end record and a
streamed count of the directory's headers, before zipfile parses the directory
(~520 bytes per entry): fast, and with the agent's memory bounded.

The zips are crafted byte by byte (one empty local file, N directory entries that
all name it), so a 200k-entry bundle takes a fraction of a second to build. Memory
is measured with tracemalloc in a fresh interpreter, so nothing else in the test
process counts."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from hivemind_worker.errors import BundleError
from hivemind_worker.tasks.bundle import unpack_bundle

MAX_FILES = 10_000  # Settings.bundle_max_files' default
MANY = 200_000
CD = struct.Struct("<4s4B4HL2L5H2L")
EOCD = struct.Struct("<4s4H2LH")
EOCD64 = struct.Struct("<4sQ2H2L4Q")
LOCATOR64 = struct.Struct("<4sLQL")


def craft(path: Path, entries: int, listed: int | None = None, zip64: bool = False,
          cd_size: int | None = None) -> Path:
    """A zip with ``entries`` directory headers; the end record says ``listed``
    entries and ``cd_size`` bytes (the truth unless given)."""
    local = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    names = (b"f%07d" % i for i in range(entries))
    directory = b"".join(
        CD.pack(b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(n), 0, 0, 0, 0, 0o644 << 16, 0) + n
        for n in names
    )
    listed = entries if listed is None else listed
    size = len(directory) if cd_size is None else cd_size
    offset = len(local)
    tail = b""
    if zip64:
        eocd64_at = offset + len(directory)
        tail = EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, listed, listed, size, offset)
        tail += LOCATOR64.pack(b"PK\x06\x07", 0, eocd64_at, 1)
        tail += EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        tail = EOCD.pack(b"PK\x05\x06", 0, 0, listed, listed, size, offset, 0)
    path.write_bytes(local + directory + tail)
    return path


def measure(call: str, zip_path: Path, dest: Path, traced: bool = True) -> dict:
    """Run ``call`` in a fresh interpreter: its tracemalloc peak (when ``traced``:
    tracemalloc makes zipfile's 200k allocations take a minute), how much its peak
    RSS grew (VmHWM: ru_maxrss would carry pytest's own over the exec), the time and
    the error."""
    script = textwrap.dedent(f"""
        import json, re, time, tracemalloc, zipfile
        from pathlib import Path
        from hivemind_worker.tasks.bundle import unpack_bundle
        zip_path, dest = Path({str(zip_path)!r}), Path({str(dest)!r})
        if {traced}:
            tracemalloc.start()
        def hwm():
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        rss0 = hwm()
        t0 = time.perf_counter()
        error = ""
        try:
            {call}
        except Exception as exc:
            error = f"{{type(exc).__name__}}: {{exc}}"
        elapsed = time.perf_counter() - t0
        rss = hwm() - rss0
        peak = tracemalloc.get_traced_memory()[1] if {traced} else None
        print(json.dumps(dict(peak=peak, rss_growth=rss, seconds=elapsed, error=error)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_a_zip_that_lists_200k_entries_is_refused_fast_with_bounded_memory(tmp_path: Path):
    bundle = craft(tmp_path / "many.zip", MANY, zip64=True)
    ours = measure(f"unpack_bundle(zip_path, dest, {MAX_FILES}, 2 * 1024**3)", bundle, tmp_path / "ws")
    assert f"bundle lists {MANY} entries, more than the limit of {MAX_FILES} files" in ours["error"]
    assert ours["seconds"] < 1.0
    assert ours["peak"] < 1024 * 1024 and ours["rss_growth"] < 4 * 1024 * 1024, ours
    assert not (tmp_path / "ws").exists()
    # The same file through zipfile alone: what the check saves (and proof the zip is valid).
    theirs = measure("len(zipfile.ZipFile(zip_path).infolist())", bundle, tmp_path / "ws", traced=False)
    assert theirs["error"] == "" and theirs["rss_growth"] > 20 * 1024 * 1024, (ours, theirs)
    print(f"\n{MANY} entries, {bundle.stat().st_size} bytes: unpack_bundle peak {ours['peak']} B "
          f"(RSS +{ours['rss_growth']} B) in {ours['seconds']:.4f} s; "
          f"zipfile.ZipFile RSS +{theirs['rss_growth']} B in {theirs['seconds']:.2f} s")


def test_an_end_record_that_lies_about_the_count_is_caught_by_counting_headers(tmp_path: Path):
    bundle = craft(tmp_path / "forged.zip", MANY // 10, listed=1)  # says 1; holds 20k
    call = f"unpack_bundle(zip_path, dest, {MAX_FILES}, 2 * 1024**3)"
    result = measure(call, bundle, tmp_path / "ws")
    assert f"bundle has more than {MAX_FILES} entries (its end record says 1)" in result["error"]
    assert result["peak"] < 1024 * 1024 and result["rss_growth"] < 4 * 1024 * 1024, result
    # Timed without tracemalloc, which makes each of the 10k header reads ~10x slower.
    assert measure(call, bundle, tmp_path / "ws", traced=False)["seconds"] < 1.0


def test_a_directory_size_past_the_budget_is_refused_without_reading_it(tmp_path: Path):
    bundle = craft(tmp_path / "huge.zip", 3, zip64=True, cd_size=1 << 40)
    with pytest.raises(BundleError, match=r"central directory is 1099511627776 bytes, more than the 40960 bytes"):
        unpack_bundle(bundle, tmp_path / "ws", max_files=10, max_bytes=1024)


def test_a_directory_that_is_not_where_the_end_record_says_is_refused(tmp_path: Path):
    bundle = craft(tmp_path / "bad.zip", 3, cd_size=10)  # 10 bytes: not a whole header
    with pytest.raises(BundleError, match="central directory is corrupt"):
        unpack_bundle(bundle, tmp_path / "ws", max_files=10, max_bytes=1024)


def test_bundles_at_the_limit_still_unpack(tmp_path: Path):
    bundle = craft(tmp_path / "zip64.zip", 5, zip64=True)  # our own zip64 writer, read back
    # Past the directory checks, so zipfile and we agree on where the directory is;
    # the headers' names differ from the one local file's, which zipfile refuses.
    with pytest.raises(BundleError, match="corrupt at entry 'f0000000'"):
        unpack_bundle(bundle, tmp_path / "ws1", max_files=5, max_bytes=1024)
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.comment = b"a comment moves the end record away from the file's end"
        for i in range(20):
            zf.writestr(f"d/f{i}.txt", b"x" * i)
    done = unpack_bundle(tmp_path / "ok.zip", tmp_path / "ws2", max_files=20, max_bytes=1024)
    assert (done.files, done.bytes) == (20, sum(range(20)))
