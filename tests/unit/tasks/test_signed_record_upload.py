"""The signed record travels with every upload of a result (TaskManager against the
fakes of our own seams): written beside the archive when the result is built, and
made again before the upload when it is missing (a result spooled by a version
before usage records, here: its record deleted while the master was away)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hivemind_worker import usage
from hivemind_worker.tasks.model import TaskStatus
from hivemind_worker.tasks.result import read_usage, usage_path
from tests.support.localhost import LocalTaskHost
from tests.unit.tasks.fakes import Script, request
from tests.unit.tasks.test_manager import manager, until


class AwayHost(LocalTaskHost):
    """Says when an upload was refused because the master was away."""

    def __init__(self, results_dir: Path) -> None:
        super().__init__(results_dir)
        self.upload_refused = asyncio.Event()

    async def upload_result(self, task_id: str, archive: Path, *rest, **options) -> None:
        try:
            await super().upload_result(task_id, archive, *rest, **options)
        except ConnectionError:
            self.upload_refused.set()
            raise


async def test_a_result_without_its_record_gets_one_before_the_upload(settings, runtime, tmp_path) -> None:
    host = AwayHost(tmp_path / "results")
    runtime.scripts["t"] = Script(lines=["x"], hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t", attempt=2))
    await until(lambda: runtime.has("t") and runtime.by_task("t").running)
    host.online = False  # the master is away when the task ends
    m.session_closed()
    runtime._exit(runtime.by_task("t"), 3, False)
    await until(lambda: m.held_tasks() and m.held_tasks()[0].result_pending)
    # Its first try failed: the master comes back only after the record is gone.
    await asyncio.wait_for(host.upload_refused.wait(), 15)
    result = settings.state_dir / "tasks" / "t" / "result.tar.gz"
    assert "t" not in host.usage  # nothing uploaded yet
    first = usage.verify(read_usage(result), usage.public_key_bytes(host.usage_key))
    assert (first["task_id"], first["attempt"], first["state"], first["exit_code"]) == ("t", 2, "exited", 3)
    usage_path(result).unlink()  # as a result spooled before usage records
    host.online = True
    await m.resync()
    await until(lambda: not m.held_tasks())
    sent = usage.verify(host.usage["t"], usage.public_key_bytes(host.usage_key))
    assert sent == first  # the same record again: the outcome from the archive's exit record
    assert host.statuses("t")[-1] is TaskStatus.DONE
    await m.close()
