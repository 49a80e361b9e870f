"""Task events -> the telemetry's task history. Telemetry learns about tasks only
through this feed (plain values), so it depends on nothing in tasks/."""

from __future__ import annotations

from typing import Callable, Protocol

from hivemind_worker.tasks.model import TaskEvent, TaskStatus

# After these the task's outcome is known; UPLOADING / DONE only deliver the result
# and must not overwrite "failed" or "oom_killed" in the history.
_OUTCOMES = {TaskStatus.REJECTED, TaskStatus.EXITED, TaskStatus.FAILED, TaskStatus.CANCELLED,
             TaskStatus.TIMED_OUT, TaskStatus.OOM_KILLED}


class TaskHistory(Protocol):
    def task_started(self, task_id: str, time_ms: int) -> None: ...

    def task_ended(self, task_id: str, state: str, time_ms: int, exit_code: int | None, reason: str) -> None: ...


def history_feed(history: TaskHistory) -> Callable[[TaskEvent], None]:
    """The TaskManager's ``on_event`` hook that keeps ``history`` up to date."""
    def on_event(event: TaskEvent) -> None:
        if event.status is TaskStatus.RUNNING:
            history.task_started(event.task_id, event.time_ms)
        elif event.status in _OUTCOMES:
            # TaskEvent's exit_code defaults to 0: only trust it where a process ended.
            known = event.status in (TaskStatus.EXITED, TaskStatus.OOM_KILLED) or event.exit_code != 0
            history.task_ended(event.task_id, event.status.value, event.time_ms,
                               event.exit_code if known else None, event.reason)
    return on_event
