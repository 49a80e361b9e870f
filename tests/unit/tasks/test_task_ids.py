"""Task ids become directory and container names: the whole id must match, so a
trailing newline (which "$" lets through with re.match) is refused."""

from __future__ import annotations

import pytest

from hivemind_worker.errors import TaskRejected
from hivemind_worker.tasks.workspace import check_task_id


@pytest.mark.parametrize("task_id", ["t-1", "a", "x" * 128, "run_2026.11.29-A"])
def test_good_ids(task_id):
    check_task_id(task_id)


@pytest.mark.parametrize("task_id", ["t-1\n", "t-1\r\n", "\nt-1", "t 1", "-t", "x" * 129, "a..b", "", "t-1\x1b[2J"])
def test_bad_ids(task_id):
    with pytest.raises(TaskRejected, match="invalid task id"):
        check_task_id(task_id)
