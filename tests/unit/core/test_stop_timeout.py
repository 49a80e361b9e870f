"""While a drain runs the agent keeps extending systemd's stop timeout
(EXTEND_TIMEOUT_USEC), so a TimeoutStopSec= written for an older, shorter
drain_timeout_s does not SIGKILL the drain; the extensions end with the drain, which
is bounded, so a wedged daemon is still killed. The real systemd side is
tests/system/host/test_stop_timeout.py."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from hivemind_worker.agent.daemon import Agent, AgentParts
from hivemind_worker.agent.host import SessionHost
from hivemind_worker.agent.router import Router
from hivemind_worker.config import Settings
from hivemind_worker.identity import NodeIdentity
from hivemind_worker.systemd.notify import FakeNotifier
from hivemind_worker.tasks.model import DrainState, Resources
from tests.support.wait import until
from tests.unit.core.test_agent import FakeSession

EXTEND = "EXTEND_TIMEOUT_USEC=2000000"


class HeldDrain:
    """The agent's view of a task manager whose drain lasts until the test says so
    (``finish``), or forever (a task that ignores its deadline)."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()
        self.draining = asyncio.Event()
        self.closed = False

    async def start(self) -> None:
        """Nothing to start: the drain is all the agent asks of this fake."""

    async def drain(self, deadline_s: float) -> None:
        self.draining.set()
        await self.finish.wait()

    async def close(self) -> None:
        self.closed = True

    def free(self) -> Resources:
        return Resources()


def make_agent(tmp_path: Path, tasks: HeldDrain, stop_mode: str = "drain") -> tuple[Agent, FakeNotifier]:
    settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", report_interval_s=0.05,
                        drain_timeout_s=0.2, stop_mode=stop_mode)
    settings.state_dir.mkdir(parents=True)
    notifier = FakeNotifier()
    session = FakeSession()
    drain = DrainState()
    router = Router("node-1", 4 * 1024 * 1024, 4, drain, session, SessionHost(session), tasks)  # type: ignore[arg-type]
    agent = Agent(settings, NodeIdentity("node-1", "secret", "127.0.0.1:1", tls=False), AgentParts(
        session=session, router=router, notifier=notifier, sample=_sample, tasks=tasks,  # type: ignore[arg-type]
    ))
    # Short windows so the test sees several extensions quickly; the sizes are the daemon's choice.
    agent.stop_extend_every_s = 0.05
    agent.stop_extend_window_s = 2.0
    return agent, notifier


async def _sample() -> dict:
    return {"cpu_percent": 1.0}


def _extender_running() -> bool:
    return any(t.get_name() == "stop-timeout" and not t.done() for t in asyncio.all_tasks())


async def test_a_drain_extends_the_stop_timeout_until_it_ends(tmp_path) -> None:
    tasks = HeldDrain()
    agent, notifier = make_agent(tmp_path, tasks)
    await agent.startup()
    agent._handle_exit(signal.SIGTERM)  # stop_mode "drain": SIGTERM drains
    stopping = asyncio.create_task(agent.shutdown())
    await asyncio.wait_for(tasks.draining.wait(), 5)
    # Asked again and again while the drain lasts, each time for the window.
    await until(lambda: notifier.sent.count(EXTEND) >= 3)
    assert _extender_running()
    assert notifier.sent.index("STOPPING=1") < notifier.sent.index(EXTEND)
    tasks.finish.set()
    await asyncio.wait_for(stopping, 5)
    # The drain is over: nothing is left to ask for more time (a daemon wedged after
    # this point is killed when the last window runs out).
    assert not _extender_running()
    assert tasks.closed
    assert all(line == EXTEND for line in notifier.sent if line.startswith("EXTEND_TIMEOUT_USEC="))


async def test_a_drain_past_its_deadline_stops_asking(tmp_path) -> None:
    """A drain that never ends (its tasks ignore the deadline) is abandoned after
    drain_timeout_s plus the grace, and the extensions end with it."""
    tasks = HeldDrain()  # never finished
    agent, notifier = make_agent(tmp_path, tasks)
    agent.drain_grace_s = 0.3
    await agent.startup()
    agent._handle_exit(signal.SIGINT)  # SIGINT drains whatever stop_mode says
    await asyncio.wait_for(agent.shutdown(), 5)
    assert EXTEND in notifier.sent
    assert not _extender_running()


async def test_a_handoff_asks_for_no_more_time(tmp_path) -> None:
    tasks = HeldDrain()
    agent, notifier = make_agent(tmp_path, tasks, stop_mode="handoff")
    await agent.startup()
    agent._handle_exit(signal.SIGTERM)
    await asyncio.wait_for(agent.shutdown(), 5)
    assert agent.handoff and not tasks.draining.is_set()
    assert not [line for line in notifier.sent if line.startswith("EXTEND_TIMEOUT_USEC=")]
