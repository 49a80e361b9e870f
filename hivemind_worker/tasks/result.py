"""Building a finished task's result: exit record + logs + output, as one archive.

``build_result`` is blocking (it renders the spool as plain text and compresses the
output) and runs in a thread. If the output cannot be shipped (larger than the
limit, unreadable), the archive still carries the logs and an exit record that says
why, so the master always learns how the task ended. On a full disk (ENOSPC) the
workspace is deleted to make room and the archive carries what fits: the logs and
the exit record, or the exit record alone; the reason then starts with
``node disk full`` and says the output was dropped. Knows nothing of uploads.

Beside the archive goes the task's signed usage record (``<result>.usage``: the
signature in hex on the first line, then the record's exact bytes): what it used,
the outcome and the archive's sha256, signed by the node's key through the signer
the host gives (the task layer never holds the key). The master verifies it
against the archive it received (hivemind_worker/usage.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hivemind_worker.errors import ResultError
from hivemind_worker.tasks.archive import make_result_archive
from hivemind_worker.tasks.disk import is_disk_full
from hivemind_worker.tasks.journal import TaskRow
from hivemind_worker.tasks.logspool import LogSpool, render_text
from hivemind_worker.tasks.model import Resources, TaskStatus
from hivemind_worker.tasks.workspace import TaskDirs
from hivemind_worker.usage import VERSION, SignedRecord

logger = logging.getLogger(__name__)

# Signs a usage record with the node's key; None where the node has no key (tests).
UsageSigner = Callable[[dict[str, Any]], "SignedRecord | None"]


@dataclass(frozen=True)
class UsageSeal:
    """What the result step needs to sign the task's usage record."""

    row: TaskRow
    node_id: str
    limits: Resources  # what the container was given
    sign: UsageSigner


def exit_record(row: TaskRow, spool: LogSpool, default_image: str) -> dict:
    record = {
        "task_id": row.task_id,
        "status": row.status.value,
        "exit_code": row.exit_code,
        "reason": row.reason,
        "image": row.request.image or default_image,
        "started_ms": row.started_ms,
        "ended_ms": row.ended_ms,
        "log_lines": spool.last_seq,
        "log_dropped_lines": spool.dropped_lines,
        "log_dropped_bytes": spool.dropped_bytes,
    }
    if row.reason.startswith("node disk full"):
        record["output_dropped"] = True  # the workspace was deleted to free the disk
    return record


def build_result(dirs: TaskDirs, spool_path: Path, record: dict, max_bytes: int,
                 seal: UsageSeal | None = None) -> tuple[int, str, str]:
    """Write dirs.result (and, given ``seal``, its signed usage record beside it);
    returns (size, sha256, failure) where failure is "" when the output went in,
    else why it did not (the record then says FAILED)."""
    size, sha, failure = _build(dirs, spool_path, record, max_bytes)
    if seal is not None:
        state = TaskStatus.FAILED.value if failure else record["status"]
        try:
            seal_usage(dirs.result, seal, state, failure or record["reason"], size, sha)
        except OSError as exc:  # e.g. a full disk: ensure_usage tries again before each upload
            logger.warning("usage record of %s not written yet (%s); it is made before the upload",
                           seal.row.task_id, exc, extra={"task_id": seal.row.task_id})
    return size, sha, failure


def _build(dirs: TaskDirs, spool_path: Path, record: dict, max_bytes: int) -> tuple[int, str, str]:
    logs = dirs.root / "logs.txt"
    try:
        try:
            render_text(spool_path, logs)
            dirs.output.mkdir(parents=True, exist_ok=True)
            size, sha = make_result_archive(dirs.output, logs, record, dirs.result, max_bytes)
            return size, sha, ""
        except (ResultError, OSError) as exc:
            if is_disk_full(exc):
                was = record["reason"]
                failure = (f"{was}; the result could not be written either ({exc})" if was.startswith("node disk full")
                           else f"node disk full: the result could not be written ({exc}); output dropped (the task: {was})")
                shutil.rmtree(dirs.workspace, ignore_errors=True)  # make room for the rest
            else:
                failure = f"{record['reason']}; result not delivered: {exc}"
            record = {**record, "status": TaskStatus.FAILED.value, "reason": failure, "output_dropped": True}
            return (*_without_output(dirs, logs, record, max_bytes), failure)
    finally:
        logs.unlink(missing_ok=True)
        shutil.rmtree(dirs.root / "empty-output", ignore_errors=True)


def _without_output(dirs: TaskDirs, logs: Path, record: dict, max_bytes: int) -> tuple[int, str]:
    """The exit record and the logs; on a full disk, the exit record alone. Raises
    only if not even that fits (the runner tries again once there is room)."""
    empty = dirs.root / "empty-output"
    empty.mkdir(parents=True, exist_ok=True)
    try:
        return make_result_archive(empty, logs if logs.exists() else None, record, dirs.result, max_bytes)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logs.unlink(missing_ok=True)
        return make_result_archive(empty, None, {**record, "logs_dropped": True}, dirs.result, max_bytes)


# ---------------------------------------------------------------- the usage record
def usage_path(result: Path) -> Path:
    return result.with_name(result.name + ".usage")


def usage_record(seal: UsageSeal, state: str, reason: str, result_bytes: int, result_sha256: str) -> dict[str, Any]:
    """The record (usage.FIELDS) of the task's run. Figures the meter did not take
    (a GPU's energy, RAPL) are left out; a task that never ran used nothing."""
    row, used = seal.row, seal.row.usage  # the meter keeps its figures on the row (tasks/usage.py)
    started = row.started_ms
    known_exit = state in (TaskStatus.EXITED.value, TaskStatus.OOM_KILLED.value) or row.exit_code != 0
    record: dict[str, Any] = {
        "version": VERSION,
        "node_id": seal.node_id,
        "task_id": row.task_id,
        "attempt": row.attempt,
        "image_digest": row.image_digest,
        "bundle_sha256": row.request.bundle_sha256.lower() if row.request.bundle_size else "",
        "result_sha256": result_sha256,
        "result_bytes": result_bytes,
        "state": state,
        "exit_code": row.exit_code if known_exit and started else None,
        "reason": reason,
        "started_ms": started,
        "ended_ms": max(row.ended_ms, started),
        "cpu_seconds": float(used.cpu_seconds) if used else 0.0,
        "memory_peak_bytes": int(used.memory_peak_bytes) if used else 0,
        "memory_avg_bytes": int(used.memory_avg_bytes) if used else 0,
        "cpu_limit_millicores": seal.limits.cpu_millicores,
        "memory_limit_bytes": seal.limits.memory_bytes,
        "gpus": [],
    }
    for gpu in (used.gpus if used else ()):
        entry = {"index": gpu.index, "uuid": gpu.uuid, "gpu_seconds": float(gpu.gpu_seconds)}
        if gpu.energy_j is not None:
            entry["energy_j"] = float(gpu.energy_j)
        record["gpus"].append(entry)
    if used is not None and used.cpu_energy_j is not None:
        record["cpu_energy_j"] = float(used.cpu_energy_j)
    return record


def seal_usage(result: Path, seal: UsageSeal, state: str, reason: str, size: int, sha256: str) -> SignedRecord | None:
    """Sign the record and write it beside the archive, atomically. Blocking."""
    signed = seal.sign(usage_record(seal, state, reason, size, sha256))
    if signed is not None:
        # Renamed into place but not fsynced (8 ms a task here): a record a crash
        # leaves empty or damaged is made again from the row and the archive
        # before the upload (ensure_usage).
        path = usage_path(result)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(signed.signature.hex().encode() + b"\n" + signed.record)
        os.replace(tmp, path)
    return signed


def read_usage(result: Path) -> SignedRecord | None:
    """The signed record beside ``result``; None when there is none. Blocking."""
    try:
        data = usage_path(result).read_bytes()
    except FileNotFoundError:
        return None
    signature, _, record = data.partition(b"\n")
    try:
        signed = SignedRecord(record, bytes.fromhex(signature.decode("ascii")))
        if len(signed.signature) != 64 or not record:
            raise ValueError("no Ed25519 signature and record in it")
    except ValueError as exc:
        raise ResultError(f"{usage_path(result)} is damaged ({exc}); remove it: it is signed again before the upload") from exc
    return signed


def ensure_usage(result: Path, seal: UsageSeal) -> None:
    """A result spooled by a version without usage records gets one before its upload;
    the outcome is the one its archive's exit record states. Blocking (it reads the
    archive twice: a one-time cost after an upgrade)."""
    if not result.exists():
        return
    try:
        if read_usage(result) is not None:
            return
    except ResultError:
        pass  # damaged: sign it again
    from hivemind_worker.fsutil import sha256_file

    exit_info = _archived_exit(result)
    state = str(exit_info.get("status") or (TaskStatus.EXITED.value if seal.row.exit_code == 0 else TaskStatus.FAILED.value))
    seal_usage(result, seal, state, str(exit_info.get("reason", seal.row.reason)), result.stat().st_size, sha256_file(result))


def _archived_exit(result: Path) -> dict[str, Any]:
    import tarfile

    from hivemind_worker.tasks.archive import EXIT_NAME

    try:
        with tarfile.open(result, mode="r|gz") as tar:
            for member in tar:
                if member.name == EXIT_NAME and member.isfile():
                    fh = tar.extractfile(member)
                    return json.loads(fh.read(1 << 20)) if fh is not None else {}
    except (OSError, tarfile.TarError, ValueError):
        pass
    return {}


def usage_view(result: Path) -> dict[str, Any] | None:
    """The parsed record beside ``result`` for the monitor and `tasks --json`; None without one."""
    try:
        signed = read_usage(result)
    except (OSError, ResultError):
        return None
    return json.loads(signed.record) if signed is not None else None
