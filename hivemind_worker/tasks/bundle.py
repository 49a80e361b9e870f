"""Safe unpacking of a task bundle (a zip file) into the task's workspace.

Refuses, with a reason a user understands: bytes that are not a zip, absolute
paths, path traversal (``..``), odd or duplicate names, encrypted entries, device
files, symlinks that resolve outside the workspace, more entries than allowed, and
more uncompressed bytes than allowed - declared sizes are checked before anything
is written, and actual bytes are counted while writing, so a lying header cannot
bomb the disk. The entry count and the central directory's size are checked from
the end record, and the directory's headers counted as a stream, BEFORE zipfile
parses it: zipfile keeps ~520 bytes per entry, so a 1 GB bundle listing millions
of entries would otherwise cost gigabytes of agent memory before any limit applies. Nothing is ever written outside ``dest``: files are created with
O_EXCL | O_NOFOLLOW under directories we made, symlinks are created last and then
checked with realpath. On any failure everything written is removed again.

Synchronous and CPU/disk bound: callers run it with ``asyncio.to_thread``. Pure
standard library; knows nothing of tasks, containers or the master.
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hivemind_worker.errors import BundleError

CHUNK = 1024 * 1024
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
# Per entry, what the central directory may hold on average: the 46-byte fixed
# header, a name up to MAX_NAME_BYTES, and room for extra fields and a comment.
MAX_DIRECTORY_BYTES_PER_ENTRY = 4096
_CD_HEADER = struct.Struct("<4s4B4HL2L5H2L")  # zipfile's structCentralDir
_CD_SIGNATURE = b"PK\x01\x02"
_ZIP64_TRAILER_BYTES = 56 + 20  # zip64 end record + its locator, between directory and end record


@dataclass(frozen=True)
class UnpackedBundle:
    files: int
    bytes: int


@dataclass
class _Written:
    """What we created, in order, so a failure can take it all back."""

    paths: list[Path]
    created_dest: bool


def unpack_bundle(zip_path: Path, dest: Path, max_files: int, max_bytes: int) -> UnpackedBundle:
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        _check_directory(zip_path, max_files)
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"bundle is not a zip file ({exc}); send the task's files as one .zip") from exc
    except OSError as exc:
        raise BundleError(f"bundle could not be read: {exc}") from exc
    with archive:
        entries = _check_entries(archive, max_files, max_bytes)
        created_dest = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        written = _Written([], created_dest)
        try:
            return _extract(archive, entries, dest, max_bytes, written)
        except BaseException:
            _undo(written, dest)
            raise


def _check_directory(zip_path: Path, max_files: int) -> None:
    """Bound what zipfile will parse, reading only the end record and the fixed
    46-byte headers: the declared count, the directory's size, and the headers
    actually there (the end record's count may lie; zipfile parses by size)."""
    with open(zip_path, "rb") as f:
        # zipfile's own reader of the end record (zip64 included), so the size we
        # bound is the very size zipfile will read and parse.
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # private, undeclared in typeshed; tests/unit/tasks cover it
        if not end:
            return  # not a zip: zipfile says so in its own words
        count, size, offset, location = end[4], end[5], end[6], end[9]
        if count > max_files:
            raise BundleError(
                f"bundle lists {count} entries, more than the limit of {max_files} files; "
                "send fewer files (pack many small ones into one archive inside the bundle)"
            )
        budget = max_files * MAX_DIRECTORY_BYTES_PER_ENTRY
        if size > budget:
            raise BundleError(
                f"bundle's central directory is {size} bytes, more than the {budget} bytes allowed "
                f"for {max_files} files; send fewer files or shorter names"
            )
        start = location - size - (_ZIP64_TRAILER_BYTES if end[0] == b"PK\x06\x06" else 0)
        if start < 0:
            raise BundleError("bundle is not a zip file (its central directory lies before the file's start); "
                              "send the task's files as one .zip")
        f.seek(start)
        seen = consumed = 0
        while consumed < size:
            header = f.read(_CD_HEADER.size)
            if len(header) != _CD_HEADER.size or header[:4] != _CD_SIGNATURE:
                raise BundleError("bundle is not a zip file (its central directory is corrupt); "
                                  "send the task's files as one .zip")
            fields = _CD_HEADER.unpack(header)
            seen += 1
            if seen > max_files:
                raise BundleError(
                    f"bundle has more than {max_files} entries (its end record says {count}), "
                    f"more than the limit of {max_files} files"
                )
            skip = fields[12] + fields[13] + fields[14]  # name, extra field, comment
            f.seek(skip, os.SEEK_CUR)
            consumed += _CD_HEADER.size + skip


def _check_entries(archive: zipfile.ZipFile, max_files: int, max_bytes: int) -> list[tuple[str, zipfile.ZipInfo]]:
    infos = archive.infolist()
    if len(infos) > max_files:
        raise BundleError(f"bundle has {len(infos)} entries, more than the limit of {max_files} files")
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise BundleError(
            f"bundle would unpack to {declared} bytes, more than the limit of {max_bytes} bytes (zip bomb?)"
        )
    seen: dict[str, bool] = {}  # normalized name -> is a directory
    entries = []
    for info in infos:
        name = _safe_name(info.filename)
        is_dir = info.is_dir()
        mode = info.external_attr >> 16
        if info.flag_bits & 0x1:
            raise BundleError(f"bundle entry {info.filename!r} is encrypted; encrypted bundles are not supported")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise BundleError(f"bundle entry {info.filename!r} is a device or special file; only files, directories and links are allowed")
        if name in seen:
            if is_dir and seen[name]:
                continue  # the same directory listed twice is harmless
            raise BundleError(f"bundle has the name {info.filename!r} twice")
        seen[name] = is_dir
        entries.append((name, info))
    # A name that is a file (or link) and also the parent of another entry.
    for name, is_dir in seen.items():
        parent = posixpath.dirname(name)
        while parent:
            if seen.get(parent) is False:
                raise BundleError(f"bundle entry {name!r} lies under {parent!r}, which is a file or a link")
            parent = posixpath.dirname(parent)
    return entries


def _safe_name(raw: str) -> str:
    if not raw or len(raw.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise BundleError(f"bundle has an empty or overlong entry name ({raw[:80]!r})")
    if any(ord(c) < 32 or c == "\x7f" for c in raw) or "\\" in raw:
        raise BundleError(f"bundle entry {raw!r} has control characters or backslashes in its name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise BundleError(f"bundle entry {raw!r} is an absolute path; paths must be relative to the bundle")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BundleError(f"bundle entry {raw!r} points outside the bundle (path traversal with '..')")
    if not parts:
        raise BundleError(f"bundle has an entry without a name ({raw!r})")
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for p in parts):
        raise BundleError(f"bundle entry {raw[:80]!r} has a path component longer than {MAX_COMPONENT_BYTES} bytes")
    return "/".join(parts)


def _extract(
    archive: zipfile.ZipFile,
    entries: list[tuple[str, zipfile.ZipInfo]],
    dest: Path,
    max_bytes: int,
    written: _Written,
) -> UnpackedBundle:
    total = files = 0
    links: list[tuple[str, zipfile.ZipInfo]] = []
    for name, info in entries:
        mode = info.external_attr >> 16
        if info.is_dir():
            _make_dirs(dest, name, written)
            continue
        if stat.S_ISLNK(mode):
            links.append((name, info))
            continue
        parent = _make_dirs(dest, posixpath.dirname(name), written)
        target = parent / posixpath.basename(name)
        file_mode = 0o755 if mode & 0o111 else 0o644
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode)
        except FileExistsError as exc:
            raise BundleError(f"bundle entry {name!r} collides with another entry") from exc
        written.paths.append(target)
        try:
            with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                while chunk := src.read(CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise BundleError(
                            f"bundle unpacks to more than the limit of {max_bytes} bytes "
                            f"(entry {name!r} is larger than its header says: zip bomb?)"
                        )
                    out.write(chunk)
        except zipfile.BadZipFile as exc:
            raise BundleError(f"bundle is corrupt at entry {name!r}: {exc}") from exc
        except NotImplementedError as exc:
            raise BundleError(f"bundle entry {name!r} uses a compression method we cannot read: {exc}") from exc
        files += 1
    for name, info in links:
        files += 1
        _make_link(archive, dest, name, info, written)
    _check_links(dest, written)
    return UnpackedBundle(files=files, bytes=total)


def _make_dirs(dest: Path, rel: str, written: _Written) -> Path:
    here = dest
    for part in rel.split("/") if rel else ():
        here = here / part
        try:
            os.mkdir(here, 0o755)
            written.paths.append(here)
        except FileExistsError:
            if here.is_symlink() or not here.is_dir():
                raise BundleError(f"bundle entry under {rel!r} collides with a file or link") from None
    return here


def _make_link(archive: zipfile.ZipFile, dest: Path, name: str, info: zipfile.ZipInfo, written: _Written) -> None:
    if info.file_size > 4096:
        raise BundleError(f"bundle link {name!r} has an implausible target ({info.file_size} bytes)")
    target = archive.read(info).decode("utf-8", "replace")
    if not target or target.startswith("/") or "\x00" in target:
        raise BundleError(f"bundle link {name!r} -> {target!r} points outside the workspace (absolute target)")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if lexical == ".." or lexical.startswith("../"):
        raise BundleError(f"bundle link {name!r} -> {target!r} points outside the workspace")
    path = _make_dirs(dest, posixpath.dirname(name), written) / posixpath.basename(name)
    try:
        os.symlink(target, path)
    except FileExistsError as exc:
        raise BundleError(f"bundle link {name!r} collides with another entry") from exc
    written.paths.append(path)


def _check_links(dest: Path, written: _Written) -> None:
    """Links can chain (a -> b/.., b -> .): only the resolved path tells."""
    root = os.path.realpath(dest)
    for path in written.paths:
        if path.is_symlink():
            resolved = os.path.realpath(path)
            if resolved != root and not resolved.startswith(root + os.sep):
                rel = path.relative_to(dest)
                raise BundleError(f"bundle link {str(rel)!r} -> {os.readlink(path)!r} resolves outside the workspace")


def _undo(written: _Written, dest: Path) -> None:
    for path in reversed(written.paths):
        try:
            if path.is_symlink() or not path.is_dir():
                path.unlink()
            else:
                path.rmdir()
        except OSError:
            pass
    if written.created_dest:
        try:
            dest.rmdir()
        except OSError:
            pass
