"""Infrastructure failures are not the task's: LOST with the cause (hand-written fakes
of the runtime; the real engine restarts are in tests/integration/runtime/)."""

from __future__ import annotations

import asyncio

from hivemind_worker.errors import RuntimeUnavailable
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import TaskStatus
from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script, request

S = TaskStatus


def manager(settings, runtime, host) -> TaskManager:
    m = TaskManager(settings, runtime, host, "node-1", capacity=CAPACITY, sampler=None)
    host.manager = m
    return m


async def settled(m: TaskManager, timeout: float = 15) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while m.held_tasks():
        assert asyncio.get_running_loop().time() < end, m.snapshot()
        await asyncio.sleep(0.01)


async def test_engine_unreachable_while_preparing_is_lost_not_failed(settings, runtime: FakeRuntime,
                                                                     host: LocalTaskHost) -> None:
    async def no_engine(image: str) -> bool:
        raise RuntimeUnavailable("look up image x: Docker engine not reachable; start the Docker engine")

    runtime.has_image = no_engine  # type: ignore[method-assign]
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await settled(m)
    ev = host.final_event("t")
    assert ev.status is S.LOST and ev.reason.startswith("lost: the task could not be started: look up image x")
    assert "not the task's fault" in ev.reason and host.uploads == {"t": 1}
    await m.close()


async def test_a_container_stopped_by_an_engine_shutdown_is_lost(settings, runtime: FakeRuntime,
                                                                 host: LocalTaskHost) -> None:
    real_wait = runtime.wait
    calls = []

    async def engine_goes_away(cid: str):
        calls.append(cid)
        if len(calls) == 1:  # the engine stops the container (SIGTERM) and goes away
            runtime._exit(runtime.containers[cid], 143, False)
            raise RuntimeUnavailable("wait for container: Docker engine not reachable")
        return await real_wait(cid)

    runtime.wait = engine_goes_away  # type: ignore[method-assign]
    runtime.scripts["t"] = Script(lines=["a", "b"], hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await settled(m)
    ev = host.final_event("t")
    assert (ev.status, ev.exit_code) == (S.LOST, 143), ev
    assert ev.reason.startswith("lost: the Docker engine restarted and stopped the container (exit code 143)")
    await m.close()


async def test_a_task_exiting_143_by_itself_is_its_own_exit(settings, runtime: FakeRuntime,
                                                            host: LocalTaskHost) -> None:
    runtime.scripts["t"] = Script(lines=["bye"], exit_code=143)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await settled(m)
    ev = host.final_event("t")
    assert (ev.status, ev.exit_code, ev.reason) == (S.EXITED, 143, "exited with code 143")
    await m.close()


async def test_cleanup_waits_for_an_engine_that_is_away(settings, runtime: FakeRuntime, host: LocalTaskHost) -> None:
    """A lost task's container is removed once the engine is back, before the task is
    let go: a leftover would block its next attempt here (same container name)."""
    real_remove = runtime.remove
    failures = [2]

    async def away_then_back(cid: str) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeUnavailable("remove container: Docker engine not reachable")
        await real_remove(cid)

    runtime.remove = away_then_back  # type: ignore[method-assign]
    runtime.scripts["t"] = Script(lines=["x"])
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await settled(m)
    assert failures == [0] and not runtime.has("t") and host.final_event("t").status is S.EXITED
    await m.close()
