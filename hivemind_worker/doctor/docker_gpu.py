"""Doctor checks of the container runtime: Docker reachable and recent enough, the
service user allowed on its socket, the NVIDIA driver (NVML) and Docker's NVIDIA
runtime. Read-only; every Docker call carries the check's time bound."""

from __future__ import annotations

import grp
import os
import pwd
import re
from pathlib import Path
from typing import Any

from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, failed, passed, warned

MIN_DOCKER = (20, 10)
START_DOCKER = "sudo systemctl start docker (or point DOCKER_HOST at the engine); check: docker info"


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _client(ctx: DoctorContext) -> Any:
    import docker

    return docker.DockerClient(base_url=_docker_host(), timeout=max(1, int(ctx.timeout_s)))


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0].split("-")[0])[:3])


def check_docker(ctx: DoctorContext) -> list[CheckResult]:
    import docker.errors
    import requests.exceptions

    try:
        client = _client(ctx)
        try:
            version = client.version()
        finally:
            client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        reason = str(exc).splitlines()[0][:200]
        return [failed("docker reachable", f"no Docker engine at {_docker_host()}: {reason}", START_DOCKER),
                failed("docker version", "unknown (Docker is unreachable)", START_DOCKER)]
    number = str(version.get("Version", "?"))
    results = [passed("docker reachable", f"Docker {number} (API {version.get('ApiVersion', '?')}) at {_docker_host()}")]
    if _version_tuple(number)[:2] >= MIN_DOCKER:
        results.append(passed("docker version", f"{number} >= {MIN_DOCKER[0]}.{MIN_DOCKER[1]}"))
    else:
        results.append(failed("docker version", f"{number} is older than {MIN_DOCKER[0]}.{MIN_DOCKER[1]}",
                              "upgrade Docker: apt-get install docker.io (Debian 12+) or docker-ce"))
    return results


def check_docker_user(ctx: DoctorContext) -> list[CheckResult]:
    name = "docker access"
    try:
        user = pwd.getpwnam(ctx.user)
    except KeyError:
        return [failed(name, f"service user {ctx.user} does not exist", "sudo hivemind-worker install")]
    if user.pw_uid == 0:
        return [passed(name, f"{ctx.user} is root")]
    host = _docker_host()
    if not host.startswith("unix://"):
        return [passed(name, f"DOCKER_HOST is {host}: socket permissions do not apply")]
    socket_path = Path(host[len("unix://"):])
    try:
        gid = socket_path.stat().st_gid
    except OSError:
        try:
            gid = grp.getgrnam("docker").gr_gid
        except KeyError:
            return [failed(name, "no docker group and no Docker socket", "apt-get install docker.io; sudo hivemind-worker install")]
    group = grp.getgrgid(gid)
    if user.pw_gid == gid or ctx.user in group.gr_mem:
        return [passed(name, f"{ctx.user} is in group {group.gr_name}, which owns {socket_path}")]
    return [failed(name, f"{ctx.user} is not in group {group.gr_name}, so it cannot use {socket_path}",
                   f"sudo usermod -aG {group.gr_name} {ctx.user} && sudo systemctl restart hivemind-worker")]


def _nvml(ctx: DoctorContext) -> Any:
    if ctx.nvml is not None:
        return ctx.nvml
    import pynvml

    return pynvml


def _gpus(ctx: DoctorContext) -> tuple[str, list[str], str]:
    """(state, GPU names, driver version); state: ok | absent | broken:<why>."""
    nvml = _nvml(ctx)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        code = getattr(exc, "value", None)
        if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
            return "absent", [], ""
        return f"broken:{exc}", [], ""
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        names = []
        for index in range(nvml.nvmlDeviceGetCount()):
            label = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index))
            names.append(label.decode() if isinstance(label, bytes) else str(label))
        return "ok", names, driver
    except nvml.NVMLError as exc:
        return f"broken:{exc}", [], ""
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def check_nvml(ctx: DoctorContext) -> list[CheckResult]:
    name = "nvidia driver"
    state, names, driver = ctx.cached("gpus", lambda: _gpus(ctx))
    if state == "absent":
        return [warned(name, "no NVIDIA driver (NVML library not found): this node runs CPU tasks only",
                       "for GPU tasks install the NVIDIA driver")]
    if state.startswith("broken:"):
        return [failed(name, f"NVML is installed but fails: {state[7:]}",
                       "load the driver (modprobe nvidia, or reboot after a driver update); check: nvidia-smi")]
    if not names:
        return [warned(name, f"driver {driver}, but no GPU found", "check: nvidia-smi")]
    return [passed(name, f"{len(names)} GPU(s) ({', '.join(names)}), driver {driver}")]


def check_nvidia_runtime(ctx: DoctorContext) -> list[CheckResult]:
    name = "nvidia runtime"
    state, names, _ = ctx.cached("gpus", lambda: _gpus(ctx))
    if not names:
        return [warned(name, "not checked: no GPU on this node")]
    import docker.errors
    import requests.exceptions

    try:
        client = _client(ctx)
        try:
            runtimes = client.info().get("Runtimes") or {}
        finally:
            client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        return [failed(name, f"cannot ask Docker: {str(exc).splitlines()[0][:200]}", START_DOCKER)]
    if "nvidia" in runtimes:
        return [passed(name, f"Docker has the nvidia runtime (runtimes: {', '.join(sorted(runtimes))})")]
    return [failed(name, f"{len(names)} GPU(s) but Docker has no nvidia runtime",
                   "install nvidia-container-toolkit, then: sudo nvidia-ctk runtime configure --runtime=docker "
                   "&& sudo systemctl restart docker")]


DOCKER = Check(("docker reachable", "docker version"), check_docker, START_DOCKER)
DOCKER_USER = Check(("docker access",), check_docker_user, "report a bug: the user lookup hung")
NVML = Check(("nvidia driver",), check_nvml, "the NVIDIA driver hangs: check nvidia-smi and dmesg")
NVIDIA_RUNTIME = Check(("nvidia runtime",), check_nvidia_runtime, START_DOCKER)
