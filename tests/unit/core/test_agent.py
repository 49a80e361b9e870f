"""The Agent in one process, assembled as agent/app.py does (session -> host -> task
manager -> router -> Agent) from hand-written fakes: a session the test connects and
drops, a notifier that records the sd_notify lines, a container runtime in memory.
Drain, reload, reconnect, and the watchdog withheld when a subsystem dies."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_worker.agent.daemon import Agent, AgentParts
from hivemind_worker.agent.host import SessionHost
from hivemind_worker.agent.router import Router
from hivemind_worker.config import Settings, replace
from hivemind_worker.control.messages import NodeHello, Welcome
from hivemind_worker.control.session import SessionHandler
from hivemind_worker.errors import ConfigError
from hivemind_worker.identity import NodeIdentity
from hivemind_worker.systemd.notify import FakeNotifier
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import DrainState, Resources
from tests.support.wait import until
from tests.unit.tasks.fakes import CAPACITY, FakeRuntime


@dataclass
class FakeSession:
    """The ControlSession surface the agent, router and host use; the test decides
    when the master is there."""

    connected: bool = False
    reconnects: int = 0
    hellos: list[NodeHello] = field(default_factory=list)
    drains: list[tuple[bool, str]] = field(default_factory=list)
    reports: list[Resources | None] = field(default_factory=list)
    backoff: tuple[float, float] = (0.0, 0.0)
    closed: bool = False
    handler: SessionHandler | None = None
    running: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, should_exit: asyncio.Event, handler: SessionHandler) -> None:
        self.handler = handler
        self.running.set()
        await should_exit.wait()

    async def connect(self) -> None:
        assert self.handler is not None, "the agent runs the session first"
        self.hellos.append(self.handler.hello())
        self.connected = True
        await self.handler.on_connected(Welcome(f"s{len(self.hellos)}"))

    async def drop(self) -> None:
        assert self.handler is not None
        self.connected = False
        self.reconnects += 1
        await self.handler.on_disconnected()

    def send_drain(self, draining: bool, reason: str) -> bool:
        if self.connected:
            self.drains.append((draining, reason))
        return self.connected

    def send_report(self, sample: dict, free: Resources | None = None) -> bool:
        self.reports.append(free)
        return self.connected

    def send_event(self, event: Any) -> bool:
        return self.connected

    def send_logs(self, task_id: str, lines: list) -> tuple[int, int]:
        return (sum(chunk.lines for chunk in lines), 0) if self.connected else (0, 0)

    def update_settings(self, initial_s: float, max_s: float) -> None:
        self.backoff = (initial_s, max_s)

    def close_stream(self) -> None:
        self.closed = True


class Rig:
    def __init__(self, tmp_path: Path, reload_to: Settings | None = None) -> None:
        self.settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_images="*",
                                 report_interval_s=0.05, drain_timeout_s=5)
        self.settings.state_dir.mkdir(parents=True)
        self.reload_to = reload_to
        self.sample_error: BaseException | None = None
        self.notifier = FakeNotifier()
        self.session = FakeSession()
        drain = DrainState()
        host = SessionHost(self.session)  # type: ignore[arg-type]
        self.manager = TaskManager(self.settings, FakeRuntime(), host, "node-1", capacity=CAPACITY, sampler=None,
                                   drain=drain)
        self.router = Router("node-1", 4 * 1024 * 1024, 4, drain, self.session, host, self.manager)  # type: ignore[arg-type]
        self.agent = Agent(self.settings, NodeIdentity("node-1", "secret", "127.0.0.1:1", tls=False), AgentParts(
            session=self.session, router=self.router, notifier=self.notifier, sample=self.sample,  # type: ignore[arg-type]
            tasks=self.manager, reload_settings=self.reload,
        ))

    async def sample(self) -> dict:
        if self.sample_error is not None:
            raise self.sample_error
        return {"cpu_percent": 1.0}

    def reload(self) -> Settings:
        if self.reload_to is None:
            raise ConfigError("worker.toml: not valid TOML")
        return self.reload_to

    async def __aenter__(self) -> "Rig":
        await self.agent.startup()
        self.loop = asyncio.create_task(self.agent.main_loop())
        await asyncio.wait_for(self.session.running.wait(), 5)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.agent.should_exit.set()
        await asyncio.wait_for(self.loop, 5)
        await self.agent.shutdown()


async def test_operator_drain_reaches_hello_master_and_telemetry(tmp_path) -> None:
    async with Rig(tmp_path) as rig:
        await rig.session.connect()
        await until(lambda: rig.session.reports and rig.session.reports[-1] == CAPACITY)
        rig.agent.set_draining(True)  # SIGUSR1
        assert rig.session.drains == [(True, "drained by the operator")]
        n = len(rig.session.reports)
        await until(lambda: len(rig.session.reports) > n)
        assert rig.session.reports[-1] == Resources()  # telemetry: nothing free while drained
        await rig.session.drop()
        await rig.session.connect()
        hello = rig.session.hellos[-1]
        # A maintenance drain says so after a reconnect; it is not "shutting down".
        assert (hello.draining, hello.drain_reason) == (True, "operator")
        assert rig.session.drains[-1] == (True, "drained by the operator")
        rig.agent.set_draining(False)  # SIGUSR2
        assert rig.session.drains[-1] == (False, "resumed by the operator")
        n = len(rig.session.reports)
        await until(lambda: len(rig.session.reports) > n)
        assert rig.session.reports[-1] == CAPACITY
    # (EXTEND_TIMEOUT_USEC= lines while the drain ran: tests/unit/core/test_stop_timeout.py)
    sent = [line for line in rig.notifier.sent if not line.startswith("EXTEND_TIMEOUT_USEC=")]
    assert rig.session.closed and sent[-2:] == ["STOPPING=1", "STATUS=Draining: no new tasks"]


async def test_reconnect_resyncs_and_the_status_follows(tmp_path) -> None:
    async with Rig(tmp_path) as rig:
        await until(lambda: any(s.startswith("Master 127.0.0.1:1 unreachable") for s in rig.notifier.statuses))
        await rig.session.connect()
        await until(lambda: rig.notifier.statuses[-1] == "Connected to 127.0.0.1:1 as node-1")
        await rig.session.drop()
        await until(lambda: rig.notifier.statuses[-1] == "Master 127.0.0.1:1 unreachable, retrying (1 reconnects)")
        await rig.session.connect()
        await until(lambda: rig.notifier.statuses[-1] == "Connected to 127.0.0.1:1 as node-1")
        assert [h.draining for h in rig.session.hellos] == [False, False]
        assert rig.agent.healthy()


async def test_reload_applies_what_it_can_and_names_what_needs_a_restart(tmp_path, caplog) -> None:
    rig = Rig(tmp_path)
    rig.reload_to = replace(rig.settings, reconnect_initial_s=2.0, reconnect_max_s=9.0, log_level="DEBUG",
                            max_concurrent_tasks=9)
    caplog.set_level(logging.INFO, logger="hivemind_worker.agent.daemon")
    root_level = logging.getLogger().level
    try:
        async with rig:
            rig.agent.reload_requested = True  # SIGHUP
            await until(lambda: "READY=1" in rig.notifier.sent[rig.notifier.sent.index("RELOADING=1"):]
                        if "RELOADING=1" in rig.notifier.sent else False)
            assert rig.session.backoff == (2.0, 9.0) and logging.getLogger().level == logging.DEBUG
            assert rig.agent.settings.max_concurrent_tasks == rig.settings.max_concurrent_tasks  # not half-applied
            line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("settings reloaded"))
            assert line == ("settings reloaded: log_level, reconnect_initial_s, reconnect_max_s took effect; "
                            "max_concurrent_tasks need a restart (systemctl restart hivemind-worker)")

            rig.reload_to = None  # a broken file: refused, the old settings stay
            rig.notifier.sent.clear()
            rig.agent.reload_requested = True
            await until(lambda: "READY=1" in rig.notifier.sent)
            assert any("reload refused, keeping the old settings: worker.toml" in r.getMessage() for r in caplog.records)
            assert rig.agent.settings.reconnect_initial_s == 2.0
    finally:
        logging.getLogger().setLevel(root_level)


async def test_watchdog_is_withheld_when_a_subsystem_dies(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    caplog.set_level(logging.ERROR, logger="hivemind_worker.agent.daemon")
    async with Rig(tmp_path) as rig:
        await until(lambda: rig.notifier.sent.count("WATCHDOG=1") >= 2)
        rig.sample_error = RuntimeError("a bug in the sampler")  # not a WorkerError: the loop dies
        await until(lambda: rig.agent.unhealthy_parts() == ["telemetry"])
        pings = rig.notifier.sent.count("WATCHDOG=1")
        withheld = lambda: sum("withholding the watchdog ping" in r.getMessage() for r in caplog.records)  # noqa: E731
        await until(lambda: withheld() >= 3)  # three turns of the watchdog loop since
        assert rig.notifier.sent.count("WATCHDOG=1") == pings
        assert "unhealthy (['telemetry'])" in caplog.records[-1].getMessage()

