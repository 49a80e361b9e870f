"""What the monitor shows of tasks: JSON-ready views of held and delivered tasks.
Read-only; nothing here changes a task."""

from __future__ import annotations

from hivemind_worker.tasks.journal import TaskRow
from hivemind_worker.tasks.model import TaskStatus
from hivemind_worker.tasks.result import usage_view
from hivemind_worker.tasks.runner import TaskRun


def run_snapshot(run: TaskRun, default_image: str) -> dict:
    """JSON-ready view for the monitor (monitor/view.py tasks() shape, plus more)."""
    r = run.row
    started = r.started_ms or None
    return {
        "task_id": r.task_id,
        "status": r.status.value,
        "image": r.request.image or default_image,
        "container_id": r.container_id,
        "created_ms": r.created_ms,
        "started_ms": started,
        "ended_ms": r.ended_ms or None,
        "exit_code": r.exit_code if r.status.finished and started else None,
        "reason": r.reason,
        "priority": r.request.priority,
        "resources": {
            "cpu_millicores": run.resources.cpu_millicores,
            "memory_bytes": run.resources.memory_bytes,
            "gpu_count": run.resources.gpu_count,
        },
        "gpu_ids": list(r.gpu_ids),
        "cpu_shares": run.cpu_shares,
        "log_lines": run.spool.last_seq if run.spool else 0,
        "last_log": [rec.text for rec in (run.spool.tail(5) if run.spool else [])],
        # A finished task waiting for the master: the signed record beside its result (one small file).
        "usage": (used := usage_view(run.dirs.result) if r.status is TaskStatus.UPLOADING else None),
        "usage_signed": used is not None,
    }


def history_entry(row: TaskRow, default_image: str) -> dict:
    """A delivered task, as the monitor's history lists it."""
    return {
        "task_id": row.task_id, "status": row.status.value, "image": row.request.image or default_image,
        "created_ms": row.created_ms, "started_ms": row.started_ms or None, "ended_ms": row.ended_ms or None,
        "exit_code": row.exit_code, "reason": row.reason, "priority": row.request.priority,
        "attempt": row.attempt,
    }
