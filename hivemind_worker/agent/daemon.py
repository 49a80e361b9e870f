"""The daemon's lifecycle, after uvicorn's Server: startup() -> main_loop() -> shutdown(),
driven by ``should_exit``; signal handlers only set flags.

SIGINT, and SIGTERM under stop_mode "drain", drain (no new tasks, running ones finish
or are cancelled at the deadline, the master is told) and exit cleanly; SIGTERM under
stop_mode "handoff" (the default) exits at once and leaves running containers to the
next agent; SIGHUP reloads what can change at
run time; SIGUSR1 / SIGUSR2 drain without exiting / resume (`hivemind-worker drain`). The watchdog is pinged from the event loop only while the loop and every
subsystem are healthy, so a wedged loop or a dead subsystem gets us restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

from hivemind_worker.agent.router import Router, TaskService
from hivemind_worker.config import Settings, changed_keys, replace
from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import CredentialRevoked, WorkerError
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.identity import NodeIdentity
from hivemind_worker.systemd.notify import Notifier, watchdog_interval
from hivemind_worker.tasks.model import DrainCause, DrainState
from hivemind_worker.systemd.pidfile import pid_path, signal_daemon  # noqa: F401 (drain's, moved there)

logger = logging.getLogger(__name__)

Sampler = Callable[[], Awaitable[dict[str, Any]]]

# What the agent itself reads again after a SIGHUP. Every other key was built into a
# part (task manager, telemetry, monitor, channel) when the agent started: a change
# to it is reported as needing a restart and not applied, so nothing half-applies.
RELOADABLE = frozenset({"report_interval_s", "reconnect_initial_s", "reconnect_max_s", "log_level",
                        "drain_timeout_s", "stop_mode"})


@dataclass(frozen=True)
class AgentParts:
    """Everything the agent drives, built before it in dependency order (agent/app.py:
    session -> host -> task manager -> router), so tests can replace any seam and
    nothing is attached after construction."""

    session: ControlSession
    router: Router  # the session's handler; holds the one DrainState
    notifier: Notifier
    sample: Sampler
    tasks: TaskService | None = None  # None: no Docker here; assignments are deferred
    monitor: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None
    # After each report: a short chore (e.g. read the tunnel's state), skipped while the last one runs.
    on_report: Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None = None
    reload_settings: Callable[[], Settings] | None = None
    on_close: Callable[[], None] | None = None


class Agent:
    def __init__(self, settings: Settings, identity: NodeIdentity, parts: AgentParts) -> None:
        self.settings = settings
        self.identity = identity
        self.parts = parts
        self.should_exit = asyncio.Event()
        self.force_exit = False
        # SIGTERM under stop_mode "handoff" (restarts, upgrades): the containers keep
        # running and the next agent re-attaches to them, as after a crash.
        self.handoff = False
        self.reload_requested = False
        # The one drain state: the router (hello, drain messages), the task manager
        # (admission, free capacity for telemetry) and the monitor all read it.
        self.drain: DrainState = parts.router.drain
        self.router = parts.router
        self.session = parts.session
        self.started_at = time.time()
        self.fatal: BaseException | None = None
        self._background: dict[str, asyncio.Task] = {}  # long-lived; one ending is unhealthy
        self._chores: dict[str, asyncio.Task] = {}  # short, periodic (e.g. reading the tunnel)
        self._log_extra = {"node_id": identity.node_id}
        # A drain may overrun its deadline by this much while the tasks are cancelled
        # and reported; the stop timeout is extended in windows while it runs.
        self.drain_grace_s = 10.0
        self.stop_extend_every_s = 10.0
        self.stop_extend_window_s = 30.0

    # ------------------------------------------------------------------ lifecycle
    async def serve(self) -> None:
        """Run until told to stop. Raises the error that ended the agent, if any."""
        self._install_signal_handlers()
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        if self.fatal is not None:
            raise self.fatal

    async def startup(self) -> None:
        self.parts.notifier.status("Starting: reconciling tasks")
        if self.parts.tasks is not None:
            await self.parts.tasks.start()
        self._spawn("session", self._run_session())
        self._spawn("telemetry", self._report_loop())
        if self.parts.monitor is not None:
            self._spawn("monitor", self.parts.monitor(self.should_exit))
        interval = watchdog_interval()
        if interval:
            self._spawn("watchdog", self._watchdog_loop(interval))
        atomic_write(pid_path(self.settings.state_dir), f"{os.getpid()}\n", 0o644)
        self.parts.notifier.ready(f"Running as {self.identity.node_id}; connecting to {self.identity.master}")
        logger.info("agent started as %s, master %s", self.identity.node_id, self.identity.master, extra=self._log_extra)

    async def main_loop(self) -> None:
        last_status = ""
        while not self.should_exit.is_set():
            await self._wait_exit(1.0)
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            status = self.status_line()
            if status != last_status:
                self.parts.notifier.status(status)
                last_status = status

    async def shutdown(self) -> None:
        if self.handoff:
            self.parts.notifier.stopping("Handing off: running tasks keep running for the next agent")
            logger.info("stopping; running tasks keep running for the next agent (stop_mode handoff)",
                        extra=self._log_extra)
        else:
            self.parts.notifier.stopping("Draining: no new tasks")
            logger.info("draining (deadline %.0f s)", self.settings.drain_timeout_s, extra=self._log_extra)
        self.drain.start(DrainCause.SHUTDOWN)
        self.router.send_drain()
        if self.parts.tasks is not None and not self.force_exit and not self.handoff:
            extender = asyncio.create_task(self._extend_stop_timeout(), name="stop-timeout")
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.parts.tasks.drain(self.settings.drain_timeout_s),
                                       self.settings.drain_timeout_s + self.drain_grace_s)
            except asyncio.TimeoutError:
                logger.warning("drain did not finish in time", extra=self._log_extra)
            else:
                logger.info("drain finished in %.1f s", time.monotonic() - started, extra=self._log_extra)
            finally:
                extender.cancel()
                await asyncio.gather(extender, return_exceptions=True)
        self.session.close_stream()
        session = self._background.get("session")
        if session is not None:
            # Give the master a moment to see the stream end cleanly; whatever the
            # session ends with now was logged by it and changes nothing here.
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(session), timeout=3)
        running = [*self._background.values(), *self._chores.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.parts.tasks is not None:
            await self.parts.tasks.close()
        if self.parts.on_close is not None:
            self.parts.on_close()
        pid_path(self.settings.state_dir).unlink(missing_ok=True)
        logger.info("agent stopped", extra=self._log_extra)

    # ------------------------------------------------------------------ loops
    async def _run_session(self) -> None:
        try:
            await self.session.run(self.should_exit, self.router)
        except CredentialRevoked as exc:
            logger.error("%s", exc, extra=self._log_extra)
            self.fatal = exc
            self.force_exit = True
            self.should_exit.set()

    async def _report_loop(self) -> None:
        while not self.should_exit.is_set():
            try:
                sample = await self.parts.sample()
                if self.parts.on_report is not None:
                    self.spawn_once("on-report", self.parts.on_report(sample))
                free = self.parts.tasks.free() if self.parts.tasks is not None else None
                sent = self.session.send_report(sample, free)
                logger.debug("telemetry report %s (cpu %.0f%%, memory %.0f%%)", "sent" if sent else "not sent: no session",
                             sample.get("cpu_percent", 0.0), sample.get("memory_percent", 0.0))
            except WorkerError as exc:
                logger.warning("telemetry sample failed: %s", exc)
            await self._wait_exit(self.router.report_interval_override or self.settings.report_interval_s)

    async def _extend_stop_timeout(self) -> None:
        """While the drain runs, keep asking systemd for more time to stop.

        The unit's TimeoutStopSec= is written once, at install, for the drain_timeout_s
        of that day; raised later (worker.toml, a drop-in's environment, a reload), the
        drain the operator asked for would be SIGKILLed halfway. The requests come from
        the event loop and end with the drain, which is bounded (drain_timeout_s plus
        the grace): a wedged daemon stops asking and is killed one window later."""
        while True:
            self.parts.notifier.extend_timeout(self.stop_extend_window_s)
            await asyncio.sleep(self.stop_extend_every_s)

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            if self.healthy():
                self.parts.notifier.watchdog()
            else:
                logger.error("unhealthy (%s); withholding the watchdog ping", self.unhealthy_parts())
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ health
    def unhealthy_parts(self) -> list[str]:
        return [name for name, task in self._background.items() if name != "watchdog" and task.done()]

    def healthy(self) -> bool:
        return not self.unhealthy_parts()

    def status_line(self) -> str:
        s = self.session
        if s.connected:
            line = f"Connected to {self.identity.master} as {self.identity.node_id}"
        else:
            line = f"Master {self.identity.master} unreachable, retrying ({s.reconnects} reconnects)"
        if self.drain.draining:
            line += f"; draining ({self.drain.reason})"
        return line

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._handle_exit, sig)
            loop.add_signal_handler(signal.SIGHUP, self._handle_reload)
            # `hivemind-worker drain [--resume]`: stop taking tasks, keep running.
            loop.add_signal_handler(signal.SIGUSR1, self.set_draining, True)
            loop.add_signal_handler(signal.SIGUSR2, self.set_draining, False)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass

    def _handle_exit(self, sig: int) -> None:
        if self.should_exit.is_set():
            self.force_exit = True  # a second signal skips the drain
        else:  # SIGINT (Ctrl-C, the package's removal) always drains
            self.handoff = sig == signal.SIGTERM and self.settings.stop_mode == "handoff"
        self.should_exit.set()

    def _handle_reload(self) -> None:
        self.reload_requested = True

    def set_draining(self, draining: bool) -> None:
        """Take no new tasks (running ones finish) and tell the master, or resume."""
        changed = self.drain.start(DrainCause.OPERATOR) if draining else self.drain.end(DrainCause.OPERATOR)
        if not changed:  # already so, or still draining for another cause (shutdown, master)
            logger.info("operator %s; draining: %s", "drain" if draining else "resume", self.drain.reason or "no",
                        extra=self._log_extra)
            return
        reason = "drained by the operator" if draining else "resumed by the operator"
        if self.session.connected:
            self.session.send_drain(draining, reason)
        logger.info("%s", reason, extra=self._log_extra)

    def _reload(self) -> None:
        if self.parts.reload_settings is None:
            return
        self.parts.notifier.reloading()
        try:
            new = self.parts.reload_settings()
        except WorkerError as exc:
            logger.error("reload refused, keeping the old settings: %s", exc)
        else:
            changed = changed_keys(self.settings, new)
            applied, pending = sorted(changed & RELOADABLE), sorted(changed - RELOADABLE)
            self.settings = replace(self.settings, **{key: getattr(new, key) for key in applied})
            self.session.update_settings(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
            logging.getLogger().setLevel(self.settings.log_level)
            logger.info("settings reloaded: %s took effect; %s", ", ".join(applied) or "nothing changed",
                        f"{', '.join(pending)} need a restart (systemctl restart hivemind-worker)" if pending
                        else "nothing needs a restart", extra=self._log_extra)
        self.parts.notifier.ready(self.status_line())

    async def _wait_exit(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking at once when the agent is told to stop."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.should_exit.wait(), timeout=timeout_s)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._background[name] = asyncio.create_task(coro, name=name)

    def spawn_once(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short chore unless the last one of that name is still running."""
        previous = self._chores.get(name)
        if previous is not None and not previous.done():
            coro.close()
            return
        self._chores[name] = asyncio.create_task(coro, name=name)
