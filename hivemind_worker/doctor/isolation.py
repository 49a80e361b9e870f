"""Doctor checks of the isolation in force around tasks: the task uid, the OCI
runtime (runc or gVisor), Docker's user-namespace remapping, and the egress firewall
of bridge tasks. Each says what is in force and, where a layer is missing, the fix.
Read-only: it never installs rules or registers runtimes."""

from __future__ import annotations

import os
import pwd
from typing import Any

from hivemind_worker.doctor.docker_gpu import _client
from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, failed, passed, warned
from hivemind_worker.errors import TaskError
from hivemind_worker.runtime.egress import EgressFirewall
from hivemind_worker.tasks.policy import allowed_networks, host_account_problem

GVISOR_FIX = ('register gVisor with Docker: apt-get install runsc, then in /etc/docker/daemon.json '
              '"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}, '
              'reload dockerd (SIGHUP) and set task_runtime = "runsc" (networkless CPU tasks run under it)')
USERNS_FIX = ('set "userns-remap": "default" in /etc/docker/daemon.json and restart dockerd (a task\'s ids then '
              'map to unprivileged subordinate ids; existing images are pulled again)')


def _docker_info(ctx: DoctorContext) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        client = _client(ctx)
        try:
            return client.info()
        finally:
            client.close()

    return ctx.cached("docker info", read)


def check_task_user(ctx: DoctorContext) -> list[CheckResult]:
    name, user = "task user", ctx.settings.task_user
    problem = host_account_problem(user)
    if problem:
        return [failed(name, f"{problem.split(';')[0]}: tasks are refused until it changes",
                       "set task_user in worker.toml to an id no host account or group has, e.g. 65100:65100")]
    return [passed(name, f"tasks run as {user}, an id no host account or group has")]


def check_runtime(ctx: DoctorContext) -> list[CheckResult]:
    try:
        info = _docker_info(ctx)
    except Exception as exc:  # the docker checks report why; one line here is enough
        return [warned("task runtime", f"unknown (Docker unreachable: {str(exc).splitlines()[0][:120]})"),
                warned("userns-remap", "unknown (Docker unreachable)")]
    runtimes = sorted(info.get("Runtimes") or {})
    wanted = ctx.settings.task_runtime
    default = info.get("DefaultRuntime", "runc")
    gvisor = [r for r in runtimes if "runsc" in r]
    if wanted and wanted not in runtimes:
        results = [failed("task runtime", f"task_runtime = {wanted!r} is not registered with Docker "
                          f"(it has {', '.join(runtimes)}): networkless tasks would fail", GVISOR_FIX)]
    elif wanted:
        results = [passed("task runtime", f"networkless CPU tasks run under {wanted}; bridge and GPU tasks "
                          f"under {default}")]
    elif gvisor:
        results = [warned("task runtime", f"{default} for every task, though Docker has {gvisor[0]} (gVisor)",
                          f'set task_runtime = "{gvisor[0]}" to run networkless CPU tasks under gVisor')]
    else:
        results = [warned("task runtime", f"{default} for every task: a kernel exploit in a task reaches the host "
                          "kernel directly", GVISOR_FIX)]
    options = " ".join(info.get("SecurityOptions") or [])
    if "name=userns" in options:
        results.append(passed("userns-remap", "on: a task's uid 0 and task uid map to unprivileged host ids"))
    else:
        results.append(warned("userns-remap", f"off: a task's uid is the same uid on the host "
                              f"({ctx.settings.task_user}, no host account's)", USERNS_FIX))
    return results


def check_egress(ctx: DoctorContext) -> list[CheckResult]:
    name = "egress policy"
    if "bridge" not in allowed_networks(ctx.settings):
        return [passed(name, 'task_networks = "none": tasks have no network at all')]
    try:
        service_is_root = pwd.getpwnam(ctx.user).pw_uid == 0
    except KeyError:
        service_is_root = False
    if not service_is_root:
        # The packaged unit has no capabilities: the agent cannot write iptables rules,
        # and it runs no bridge task without them (fail closed).
        return [failed(name, f"bridge tasks allowed, but the service user {ctx.user} cannot install the egress "
                       "firewall (it needs root or CAP_NET_ADMIN): every bridge task will fail",
                       'run the agent as root, or keep task_networks = "none"')]
    if os.geteuid() != 0:
        return [warned(name, "bridge tasks allowed; the firewall can only be checked as root",
                       "run sudo hivemind-worker doctor")]
    try:
        gaps = ctx.cached("egress firewall", EgressFirewall).missing()
    except TaskError as exc:
        return [failed(name, f"cannot read the firewall: {exc}", "install iptables; run doctor as root")]
    if gaps:
        return [warned(name, f"bridge tasks allowed; {len(gaps)} egress rule(s) not in force now "
                       f"(first: {gaps[0]}); the agent installs them before each bridge task and refuses the "
                       "task when it cannot", "run the agent as root or with CAP_NET_ADMIN; check iptables")]
    return [passed(name, "bridge tasks allowed: their network reaches neither the host, its LAN, link-local "
                   "(metadata) nor the VPN")]


TASK_USER = Check(("task user",), check_task_user, "check the passwd/group databases (a hung NSS source?)")
RUNTIME = Check(("task runtime", "userns-remap"), check_runtime, "check the Docker engine: docker info")
EGRESS = Check(("egress policy",), check_egress, "check iptables: iptables -S DOCKER-USER")
