"""Small filesystem helpers: atomic writes with a mode, so a crash or a full disk
never leaves a half-written credential or config behind; a file's SHA-256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + rename.

    The temp file is created with ``mode`` from the start, so a secret is never
    readable by others, not even for a moment.
    """
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def is_private(path: Path) -> bool:
    """True when neither group nor others can read or write ``path``."""
    return path.stat().st_mode & 0o077 == 0


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks. Blocking: call it in a thread."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
