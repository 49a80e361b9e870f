"""Runs the checks concurrently, each bounded in time.

Each check runs in its own daemon thread, awaited with ``asyncio.wait_for``: a
check stuck in a system call (a Docker socket that accepts and never answers)
becomes a FAIL line at its bound, and its thread cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from hivemind_worker.config import Settings
from hivemind_worker.doctor import docker_gpu, engine, isolation, local, network
from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, failed

logger = logging.getLogger(__name__)

CHECKS: tuple[Check, ...] = (
    local.CONFIG, local.ENROLLED, local.CREDENTIALS,
    docker_gpu.DOCKER, docker_gpu.DOCKER_USER, engine.LIVE_RESTORE, local.DISK, docker_gpu.NVML, docker_gpu.NVIDIA_RUNTIME,
    network.WG_TOOLS, network.WG_IMPL, network.WG_CONF, network.WG_INTERFACE, network.MASTER,
    local.UNIT, local.MONITOR_PORT,
    isolation.TASK_USER, isolation.RUNTIME, isolation.EGRESS,
)


async def _bounded(check: Check, ctx: DoctorContext) -> list[CheckResult]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[CheckResult] | Exception] = loop.create_future()

    def deliver(value: list[CheckResult] | Exception) -> None:
        if not done.done():
            done.set_result(value)

    def work() -> None:
        try:
            value: list[CheckResult] | Exception = check.run(ctx)
        except Exception as exc:  # a bug in a check must not hide the others
            logger.debug("doctor check %s crashed", check.names[0], exc_info=True)
            value = exc
        try:
            loop.call_soon_threadsafe(deliver, value)
        except RuntimeError:  # the loop finished while we were stuck: nobody waits
            pass

    threading.Thread(target=work, name=f"doctor-{check.names[0]}", daemon=True).start()
    try:
        value = await asyncio.wait_for(done, ctx.timeout_s)
    except asyncio.TimeoutError:
        return [failed(name, f"no answer within {ctx.timeout_s:g}s", check.timeout_fix) for name in check.names]
    if isinstance(value, Exception):
        return [failed(check.names[0], f"the check itself failed: {value!r}", "run with --debug and report it")]
    return value


async def run_doctor(
    settings: Settings,
    timeout_s: float = 5.0,
    user: str | None = None,
    config_error: str | None = None,
    context: DoctorContext | None = None,
    checks: tuple[Check, ...] = CHECKS,
) -> list[CheckResult]:
    """All check results, in a fixed order. Never raises for a failing host."""
    ctx = context or DoctorContext(settings=settings, timeout_s=timeout_s, config_error=config_error)
    if user:
        ctx.user = user
    groups = await asyncio.gather(*(_bounded(check, ctx) for check in checks))
    return [result for group in groups for result in group]
