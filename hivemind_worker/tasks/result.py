"""Building a finished task's result: exit record + logs + output, as one archive.

``build_result`` is blocking (it renders the spool as plain text and compresses the
output) and runs in a thread. If the output cannot be shipped (larger than the
limit, unreadable), the archive still carries the logs and an exit record that says
why, so the master always learns how the task ended. On a full disk (ENOSPC) the
workspace is deleted to make room and the archive carries what fits: the logs and
the exit record, or the exit record alone; the reason then starts with
``node disk full`` and says the output was dropped. Knows nothing of uploads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hivemind_worker.errors import ResultError
from hivemind_worker.tasks.archive import make_result_archive
from hivemind_worker.tasks.disk import is_disk_full
from hivemind_worker.tasks.journal import TaskRow
from hivemind_worker.tasks.logspool import LogSpool, render_text
from hivemind_worker.tasks.model import TaskStatus
from hivemind_worker.tasks.workspace import TaskDirs


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


def build_result(dirs: TaskDirs, spool_path: Path, record: dict, max_bytes: int) -> tuple[int, str, str]:
    """Write dirs.result; returns (size, sha256, failure) where failure is "" when
    the output went in, else why it did not (the record then says FAILED)."""
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
