"""The runtime remembers the images it saw (no inspect per task); an image removed
since is found out by create(), and the runner pulls it then instead of failing the
task (against the fakes; the runtime's own side is tests/integration/runtime/test_engine_calls.py)."""

from __future__ import annotations

from hivemind_worker.errors import TaskError
from hivemind_worker.tasks.model import TaskStatus
from tests.support.wait import until
from tests.unit.tasks.fakes import FakeRuntime, request
from tests.unit.tasks.test_manager import manager

S = TaskStatus


class RemembersTooLong(FakeRuntime):
    """has_image() says yes from memory; the engine itself lost the image."""

    def __init__(self) -> None:
        super().__init__()
        self.remembered = {"gone:1"}

    async def has_image(self, image: str) -> bool:
        return image in self.remembered or image in self.images

    async def create(self, spec):
        if spec.image not in self.images:
            self.remembered.discard(spec.image)
            raise TaskError(f"create container for task {spec.task_id}: image not found ({spec.image})")
        return await super().create(spec)


async def test_a_vanished_image_is_pulled_and_the_task_runs(settings, host) -> None:
    runtime = RemembersTooLong()
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t", image="gone:1"))
    await until(lambda: not m.held_tasks())
    assert runtime.pulled == ["gone:1"]
    journaled = [e.status for e in host.events if e.task_id == "t" and e.seq]  # not the pull's progress
    assert journaled == [S.ACCEPTED, S.PULLING, S.RUNNING, S.EXITED, S.UPLOADING, S.DONE]
    await m.close()


async def test_a_create_failure_with_the_image_present_fails_the_task(settings, host) -> None:
    class Refuses(FakeRuntime):
        async def create(self, spec):
            raise TaskError("create container: Docker refused: bad option")

    runtime = Refuses()
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: not m.held_tasks())
    assert runtime.pulled == []
    assert host.final_event("t").status is S.FAILED and "bad option" in host.final_event("t").reason
    await m.close()
