"""The router and the task manager in one process, with a hand-written session that
behaves like the master (applies events in seq order, acknowledges what it applied)
and can drop: a task's exit while the session is down reaches the master exactly
once after the reconnect. And the one drain state: hello, admission and telemetry's
free capacity agree."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hivemind_worker.agent.daemon import Agent, AgentParts
from hivemind_worker.agent.host import SessionHost
from hivemind_worker.agent.router import Router
from hivemind_worker.config import Settings
from hivemind_worker.control.messages import Assign, Cancel, DrainRequest, EventAck, LogAck, ResultAck, Welcome
from hivemind_worker.errors import MasterUnreachable
from hivemind_worker.identity import NodeIdentity
from hivemind_worker.systemd.notify import FakeNotifier
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import DrainCause, DrainState, Resources, TaskEvent, TaskStatus
from tests.support.wait import until
from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script, request

S = TaskStatus


class FakeMasterSession:
    """The ControlSession's surface, as a master that applies each (task, attempt, seq)
    once, in order, and acknowledges the highest contiguous one."""

    def __init__(self) -> None:
        self.router: Router | None = None  # the handler, as ControlSession.run(should_exit, handler) is given
        self.connected = True
        self.received: list[TaskEvent] = []  # every event that crossed the wire
        self.applied: dict[tuple[str, int], list[TaskEvent]] = {}
        self.drains: list[tuple[bool, str]] = []
        self.results: dict[str, int] = {}
        self._acks: set[asyncio.Task] = set()

    def _later(self, command) -> None:
        task = asyncio.get_running_loop().create_task(self.router.on_message(command))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    def send_event(self, event: TaskEvent) -> bool:
        if not self.connected:
            return False
        self.received.append(event)
        if event.seq:
            applied = self.applied.setdefault((event.task_id, event.attempt), [])
            if event.seq == len(applied) + 1:  # in order; a duplicate or a gap is not applied
                applied.append(event)
            self._later(EventAck(event.task_id, event.attempt, len(applied)))
        return True

    def send_logs(self, task_id, lines):
        if not self.connected:
            return 0, 0
        self._later(LogAck(task_id, lines[-1].last_seq))
        return sum(c.lines for c in lines), sum(len(c.text) for c in lines)

    def send_drain(self, draining: bool, reason: str) -> bool:
        self.drains.append((draining, reason))
        return self.connected

    async def fetch_bundle(self, *args) -> None:
        raise AssertionError("no bundles here")

    async def upload_result(self, task_id: str, attempt: int, archive: Path, usage: object = None,
                            fresh: bool = False, sha256: str = "") -> None:
        if not self.connected:
            raise MasterUnreachable("down")
        self.results[task_id] = attempt
        self._later(ResultAck(task_id, attempt))

    async def drop(self) -> None:
        self.connected = False
        await self.router.on_disconnected()

    async def reconnect(self) -> None:
        self.connected = True
        await self.router.on_connected(Welcome("s2"))

    def outcome(self, task_id: str, attempt: int = 1) -> TaskEvent | None:
        ends = [e for e in self.applied.get((task_id, attempt), []) if e.status.finished and e.status not in (S.UPLOADING, S.DONE)]
        return ends[-1] if ends else None


def make(tmp_path: Path, runtime: FakeRuntime) -> tuple[Router, FakeMasterSession, TaskManager]:
    """Assembled as agent/app.py does: session -> host -> manager -> router."""
    settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_timeout_s=60, task_images="*")
    drain = DrainState()
    session = FakeMasterSession()
    host = SessionHost(session)  # type: ignore[arg-type]  # the fake has the surface the host uses
    manager = TaskManager(settings, runtime, host, "node-1", capacity=CAPACITY, sampler=None, drain=drain)
    router = Router("node-1", 4 * 1024 * 1024, 4, drain, session, host, manager)  # type: ignore[arg-type]
    session.router = router
    return router, session, manager


async def test_exit_while_the_session_is_down_arrives_exactly_once_after_reconnect(tmp_path) -> None:
    runtime = FakeRuntime()
    runtime.scripts["t"] = Script(lines=["working"], hang=True)
    router, master, manager = make(tmp_path, runtime)
    await manager.start()
    await router.on_connected(Welcome("s1"))
    await router.on_message(Assign(request("t")))
    await until(lambda: [e.status for e in master.applied.get(("t", 1), [])] == [S.ACCEPTED, S.RUNNING])
    await until(lambda: runtime.by_task("t").running)

    await master.drop()
    runtime._exit(runtime.by_task("t"), 7, False)  # the task ends while nobody listens
    await until(lambda: manager.held_tasks() and manager.held_tasks()[0].result_pending)
    assert master.outcome("t") is None

    await master.reconnect()
    await until(lambda: not manager.held_tasks())
    applied = master.applied[("t", 1)]
    assert [e.status for e in applied] == [S.ACCEPTED, S.RUNNING, S.EXITED, S.UPLOADING, S.DONE]
    exits = [e for e in master.received if e.status is S.EXITED]
    assert len(exits) == 1, "the exit record crossed the wire exactly once"
    assert (exits[0].exit_code, exits[0].reason, exits[0].seq) == (7, "exited with code 7", 3)
    assert master.results == {"t": 1}
    await until(lambda: not manager._events.pending)
    await manager.close()


async def test_an_event_lost_with_the_session_is_resent_in_order(tmp_path) -> None:
    runtime = FakeRuntime()
    runtime.scripts["t"] = Script(hang=True)
    router, master, manager = make(tmp_path, runtime)
    await manager.start()
    await router.on_connected(Welcome("s1"))
    await router.on_message(Assign(request("t")))
    await until(lambda: S.RUNNING in [e.status for e in master.applied.get(("t", 1), [])])
    # The session dies without the router hearing of it yet: CANCELLED is "sent" into
    # the void (the master never sees it), then the drop is noticed.
    lost: list[TaskEvent] = []
    real = master.send_event
    master.send_event = lambda e: lost.append(e) or True  # type: ignore[method-assign]
    await router.on_message(Cancel("t", "bye"))
    await until(lambda: any(e.status is S.UPLOADING for e in lost))
    master.send_event = real  # type: ignore[method-assign]
    await master.drop()
    await master.reconnect()
    await until(lambda: not manager.held_tasks())
    assert [e.status for e in master.applied[("t", 1)]][-3:] == [S.CANCELLED, S.UPLOADING, S.DONE]
    assert master.outcome("t").reason == "cancelled: bye"
    await manager.close()


async def test_a_deferred_assignment_is_progress_only_and_holds_nothing(tmp_path) -> None:
    runtime = FakeRuntime()
    router, master, manager = make(tmp_path, runtime)
    await manager.start()
    await router.on_connected(Welcome("s1"))
    await router.on_message(DrainRequest(True, "maintenance"))
    assert router.hello().drain_reason == "master" and manager.free() == Resources()
    await router.on_message(Assign(request("d")))
    ev = master.received[-1]
    assert (ev.status, ev.seq, ev.reason) == (S.DEFERRED, 0, "node draining (master): it accepts no new tasks")
    assert manager.held_tasks() == [] and master.applied == {}
    await router.on_message(DrainRequest(False, ""))
    assert not router.hello().draining and manager.free() == CAPACITY
    await manager.close()


async def test_one_drain_state_for_operator_master_and_shutdown(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_images="*")
    identity = NodeIdentity("node-1", "secret", "127.0.0.1:1", tls=False)

    async def sample() -> dict:
        return {}

    drain = DrainState()
    session = FakeMasterSession()
    host = SessionHost(session)  # type: ignore[arg-type]
    manager = TaskManager(settings, FakeRuntime(), host, "node-1", capacity=CAPACITY, sampler=None, drain=drain)
    router = Router("node-1", 4 * 1024 * 1024, 4, drain, session, host, manager)  # type: ignore[arg-type]
    session.router = router
    agent = Agent(settings, identity, AgentParts(session=session, router=router, notifier=FakeNotifier(),  # type: ignore[arg-type]
                                                 sample=sample, tasks=manager))
    agent.set_draining(True)  # SIGUSR1
    hello = agent.router.hello()
    assert (hello.draining, hello.drain_reason) == (True, "operator") and manager.free() == Resources()
    assert agent.status_line().endswith("draining (operator)")
    await agent.router.on_message(DrainRequest(False, "resumed by the master"))  # not the master's drain to end
    assert agent.router.hello().drain_reason == "operator"
    agent.set_draining(False)  # SIGUSR2
    assert not agent.router.hello().draining and manager.free() == CAPACITY
    agent.drain.start(DrainCause.SHUTDOWN)
    agent.set_draining(False)  # nothing undoes a shutdown
    assert agent.router.hello().drain_reason == "shutdown"
