"""The result archive of a finished task: its output directory, its logs and an
exit record, as one gzip-compressed tar file.

Never follows a link: links inside the output that resolve within it are stored
as links, others are skipped (and listed in exit.json), and only regular files
are read (a FIFO left behind by a task cannot hang the agent). The archive is
written to a temporary name and renamed, so a crash never leaves half an archive
under the final name; past ``max_bytes`` (compressed) it fails with ResultError.
The bytes it reads are capped too (``max_read_bytes``), counted by each file's
size BEFORE it is read: a sparse ``truncate -s 4T output/x`` occupies no disk and
gzips to almost nothing, so only its apparent size stops the agent from spending
hours compressing a terabyte of zeros.

One pass: tar, compress, hash and count as the bytes go by, never reading the
archive again. The gzip stream is written here (_GzipWriter) rather than by tarfile,
for speed: deflate level 1 (on CSV-like text ~6x less CPU than gzip's -6 for ~12 %
larger output), and each 1 MiB block whose sample does not shrink by a tenth is
stored as it is (deflate's stored blocks) instead of compressed: random, encrypted
or already compressed output costs a copy, not 30 s per GiB of deflate for nothing.
The trade-off: a block that would have shrunk a little goes whole, and a block's
sample may misjudge the rest of it (only size is at stake, never the content). It
is one standard gzip member (as pigz writes them), read by gzip, tar and tarfile.

Synchronous: callers run it with ``asyncio.to_thread``. Knows nothing of uploads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from hivemind_worker.errors import ResultError

OUTPUT_PREFIX = "output"
LOGS_NAME = "logs.txt"
EXIT_NAME = "exit.json"
GZIP_LEVEL = 1  # the upload, not the CPU, should set the pace; see the docstring
BLOCK_BYTES = 1 << 20  # unit of the store-or-compress choice, and of file reads
PROBE_BYTES = 8 * 1024  # sampled twice per block (start and middle)
STORE_RATIO = 0.9  # a sample that keeps more than this of its size: store the block
# Uncompressed bytes read per compressed byte allowed: text and CSV compress ~10:1,
# so 16 leaves real results room; a file past it is refused before it is read.
READ_FACTOR = 16


class _Budget:
    """Uncompressed bytes still allowed; files are charged by st_size before reading."""

    def __init__(self, max_read_bytes: int) -> None:
        self.max = max_read_bytes
        self.used = 0

    def charge(self, arcname: str, size: int) -> None:
        if self.used + size > self.max:
            raise ResultError(
                f"{arcname!r} is {size} bytes (by its size; a sparse file counts whole): the result would "
                f"read more than the limit of {self.max} uncompressed bytes; write less to the output "
                "directory or raise result_max_bytes"
            )
        self.used += size


class _Sink(io.RawIOBase):
    """Counts and hashes what is written; refuses to grow past the limit."""

    def __init__(self, out: BinaryIO, max_bytes: int) -> None:
        self._out = out
        self._max = max_bytes
        self.size = 0
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.size += len(view)
        if self.size > self._max:
            raise ResultError(
                f"the task's result is larger than the limit of {self._max} bytes compressed; "
                "write less to the output directory or raise result_max_bytes"
            )
        self.sha256.update(view)
        self._out.write(view)
        return len(view)


class _GzipWriter(io.RawIOBase):
    """A gzip stream (one member) of what tarfile writes, compressed or stored per
    block. Fresh deflate state at each switch, after a full flush or a stored block,
    so no back-reference ever crosses into bytes another compressor did not see."""

    def __init__(self, out: _Sink) -> None:
        self._out = out
        self._pending = bytearray()
        self._deflate: Any = None  # the compressor in use; None while storing
        self._crc = 0
        self._size = 0
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")  # magic, deflate, no flags/mtime, Unix

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks where it starts
        return self._size + len(self._pending)

    def write(self, data: Any) -> int:
        n = len(data)
        if n >= BLOCK_BYTES // 2:  # a file's contents, read a block at a time: never copied
            self._flush_pending()
            self._block(memoryview(data))
            return n
        self._pending += data  # headers, padding, small files: gathered into a block
        if len(self._pending) >= BLOCK_BYTES:
            self._flush_pending()
        return n

    def _flush_pending(self) -> None:
        if self._pending:
            block, self._pending = self._pending, bytearray()
            self._block(memoryview(block))

    def finish(self) -> None:
        self._flush_pending()
        if self._deflate is not None:
            self._out.write(self._deflate.flush(zlib.Z_FINISH))
        else:
            self._out.write(b"\x01\x00\x00\xff\xff")  # an empty final stored block
        self._out.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))

    def _block(self, block: memoryview) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        if _compresses(block):
            if self._deflate is None:
                self._deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            self._out.write(self._deflate.compress(block))
            return
        if self._deflate is not None:  # ends byte-aligned with no state carried over
            self._out.write(self._deflate.flush(zlib.Z_FULL_FLUSH))
            self._deflate = None
        for start in range(0, len(block), 0xFFFF):
            piece = block[start:start + 0xFFFF]
            self._out.write(struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF))
            self._out.write(piece)


def _compresses(block: memoryview) -> bool:
    """Whether a block is worth deflating, judged on two samples of it."""
    mid = len(block) // 2
    sample = bytes(block[:PROBE_BYTES]) + bytes(block[mid:mid + PROBE_BYTES])
    probe = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return len(probe.compress(sample)) + len(probe.flush()) < STORE_RATIO * len(sample)


def make_result_archive(
    output_dir: Path, logs_file: Path | None, exit_record: dict, dest: Path, max_bytes: int,
    max_read_bytes: int | None = None,
) -> tuple[int, str]:
    """Write the archive to ``dest``; return (size in bytes, sha256 hex).
    ``max_read_bytes`` (uncompressed) defaults to READ_FACTOR times ``max_bytes``."""
    output_dir, dest = Path(output_dir), Path(dest)
    budget = _Budget(max_bytes * READ_FACTOR if max_read_bytes is None else max_read_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    skipped: list[str] = []
    try:
        with open(part, "wb") as raw:
            sink = _Sink(raw, max_bytes)
            gz = _GzipWriter(sink)
            with tarfile.TarFile(fileobj=gz, mode="w", copybufsize=BLOCK_BYTES) as tar:
                if output_dir.is_dir() and not output_dir.is_symlink():
                    _add_tree(tar, output_dir, skipped, budget)
                if logs_file is not None and Path(logs_file).is_file():
                    _add_file(tar, Path(logs_file), LOGS_NAME, budget)
                record = dict(exit_record)
                if skipped:
                    record["skipped_from_output"] = skipped
                _add_bytes(tar, EXIT_NAME, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
            gz.finish()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return sink.size, sink.sha256.hexdigest()


def _add_tree(tar: tarfile.TarFile, root: Path, skipped: list[str], budget: _Budget) -> None:
    real_root = os.path.realpath(root)
    _add_dir(tar, root, OUTPUT_PREFIX)
    for here, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = Path(here) / name
            arcname = f"{OUTPUT_PREFIX}/{path.relative_to(root).as_posix()}"
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                resolved = os.path.realpath(path)
                if resolved == real_root or resolved.startswith(real_root + os.sep):
                    link = tarfile.TarInfo(arcname)
                    link.type = tarfile.SYMTYPE
                    link.linkname = os.readlink(path)
                    link.mtime = int(info.st_mtime)
                    tar.addfile(link)
                else:
                    skipped.append(f"{arcname} (link to outside the output directory)")
            elif stat.S_ISDIR(info.st_mode):
                _add_dir(tar, path, arcname)
            elif stat.S_ISREG(info.st_mode):
                _add_file(tar, path, arcname, budget)
            else:
                skipped.append(f"{arcname} (not a regular file)")


def _add_dir(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tarfile.TarInfo(arcname)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(path.lstat().st_mtime)
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str, budget: _Budget) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # replaced by a link or removed meanwhile: nothing to read safely
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            return
        budget.charge(arcname, st.st_size)  # tarfile reads exactly st_size bytes, no more
        info = tarfile.TarInfo(arcname)
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
        info.mtime = int(st.st_mtime)
        tar.addfile(info, src)


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))
