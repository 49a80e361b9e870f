"""The runner offers a result as ``fresh`` (TaskHost.upload_result) only on its first
try in the process that built the archive: a retry, or an agent that took the task
over after a restart, may face a master that holds part of it and must ask."""

from __future__ import annotations

from pathlib import Path

from tests.support.localhost import LocalTaskHost
from tests.support.wait import until
from tests.unit.tasks.fakes import Script, request
from tests.unit.tasks.test_manager import manager


class OfferLog(LocalTaskHost):
    """Records the ``fresh`` of every upload call, failed ones included."""

    def __init__(self, results_dir: Path, **kw) -> None:
        super().__init__(results_dir, **kw)
        self.offers: list[bool] = []

    async def upload_result(self, task_id: str, archive: Path, attempt: int = 1, fresh: bool = False,
                            sha256: str = "") -> None:
        self.offers.append(fresh)
        await super().upload_result(task_id, archive, attempt, fresh, sha256)


async def test_only_the_first_try_is_fresh(settings, runtime, tmp_path) -> None:
    host = OfferLog(tmp_path / "r")
    runtime.scripts["t"] = Script(lines=["one"], exit_code=0)
    m = manager(settings, runtime, host)
    await m.start()
    host.online = False  # the first try fails, as with a session lost mid-upload
    await m.assign(request("t"))
    await until(lambda: host.offers == [True], what="the first, fresh try")
    host.online = True
    await m.resync()
    await until(lambda: not m.held_tasks())
    assert host.offers == [True, False] and host.uploads == {"t": 1}
    await m.close()


async def test_a_result_taken_over_after_a_restart_is_not_fresh(settings, runtime, tmp_path) -> None:
    host1 = OfferLog(tmp_path / "r1", auto_ack=False)  # the master never acknowledges it
    runtime.scripts["t"] = Script(lines=["one"], exit_code=0)
    m1 = manager(settings, runtime, host1)
    await m1.start()
    await m1.assign(request("t"))
    await until(lambda: host1.uploads.get("t") == 1)
    await m1.close()
    assert host1.offers == [True]

    host2 = OfferLog(tmp_path / "r2")
    m2 = manager(settings, runtime, host2)
    await m2.start()
    await m2.resync()
    await until(lambda: not m2.held_tasks())
    assert host2.offers == [False] and host2.uploads == {"t": 1}
    await m2.close()
