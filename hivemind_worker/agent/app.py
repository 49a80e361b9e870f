"""Assembles the real daemon from settings, in one place and one direction: identity,
session, task host, task manager, router, telemetry, monitor and notifier, then the
Agent that runs them. The only place that knows
which concrete implementation backs each seam."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from hivemind_worker.address import parse_master_address
from hivemind_worker.agent.daemon import Agent, AgentParts
from hivemind_worker.agent.facts import node_capacity
from hivemind_worker.agent.history import history_feed
from hivemind_worker.agent.host import SessionHost
from hivemind_worker.agent.router import Router
from hivemind_worker.agent.view import AgentStatus
from hivemind_worker.config import Settings
from hivemind_worker.control.channel import open_channel
from hivemind_worker.control.session import ControlSession
from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.identity import NodeIdentity, ensure_usage_key, load_ca, load_identity
from hivemind_worker.monitor.live_view import LiveNodeView, monitor_part
from hivemind_worker.runtime import DockerRuntime, GpuAllocator
from hivemind_worker.systemd.notify import SystemdNotifier
from hivemind_worker.tasks.disk import disk_gate
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import DrainState
from hivemind_worker.telemetry.service import TelemetryService

logger = logging.getLogger(__name__)


async def build_agent(settings: Settings, reload: Callable[[], Settings] | None = None,
                      identity: NodeIdentity | None = None) -> Agent:
    """In dependency order, each part given what it uses: session -> host -> task
    manager -> router -> status and monitor -> Agent. Nothing is attached later."""
    identity = identity or load_identity(settings.config_dir)
    address = parse_master_address(settings.master_url or identity.master)
    if settings.master_url is None:
        address = type(address)(address.host, address.port, identity.tls)
    ca_pem = load_ca(settings.config_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    extra = {"node_id": identity.node_id}

    session = ControlSession(
        lambda: open_channel(address, ca_pem, settings.max_message_bytes), identity.node_id, identity.credential,
        reconnect_initial_s=settings.reconnect_initial_s, reconnect_max_s=settings.reconnect_max_s,
        target=identity.master, max_message_bytes=settings.max_message_bytes,
    )
    tasks: TaskManager | None = None  # made below, once Docker answered

    def running_containers() -> dict[str, str]:  # telemetry asks per sample, after assembly
        if tasks is None:
            return {}
        return {t["task_id"]: t["container_id"] for t in tasks.snapshot()
                if t["status"] == "running" and t.get("container_id")}

    telemetry = TelemetryService(settings, running_containers)
    usage_key, _ = await asyncio.to_thread(ensure_usage_key, settings.config_dir, settings.state_dir)
    host = SessionHost(session, usage_key, on_usage=telemetry.task_usage)
    drain = DrainState()
    runtime = DockerRuntime()
    docker: dict[str, Any] = {"available": False, "version": "", "error": ""}
    try:
        docker["version"] = await runtime.version()
        gpus = GpuAllocator(await runtime.gpu_inventory(), settings.max_gpus)
        docker["available"] = True
    except RuntimeUnavailable as exc:
        # The node stays visible to the master and refuses tasks with the reason;
        # `hivemind-worker doctor` says what to fix.
        docker["error"] = str(exc)
        logger.error("tasks disabled: %s", exc, extra=extra)
        runtime.close()
    else:
        logger.info("Docker %s, %d GPU(s)", docker["version"], gpus.total, extra=extra)
        tasks = TaskManager(settings, runtime, host, identity.node_id,
                            capacity=node_capacity(settings, gpus.total), gpus=gpus, disk_gate=disk_gate(settings),
                            drain=drain, on_event=history_feed(telemetry))

    router = Router(identity.node_id, settings.max_message_bytes, settings.max_concurrent_tasks, drain,
                    session, host, tasks)
    status = AgentStatus(settings, identity, session, drain, host, tasks, docker, lambda: telemetry.reports)
    view = LiveNodeView(
        telemetry, status.status, status.counters,
        task_snapshot=tasks.snapshot if tasks else list,
        log_tail=tasks.log_tail if tasks else (lambda task_id, n: ()),
    )
    return Agent(settings, identity, AgentParts(
        session=session, router=router, notifier=SystemdNotifier(), sample=telemetry.sample, tasks=tasks,
        monitor=monitor_part(settings, view), on_report=lambda sample: status.refresh_vpn(),
        reload_settings=reload, on_close=telemetry.close,
    ))


async def run_agent(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    agent = await build_agent(settings, reload)
    await agent.serve()
