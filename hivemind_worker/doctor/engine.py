"""Doctor check of the Docker engine's live-restore: whether running tasks survive
an engine restart or upgrade. Read-only; one `docker info` within the check's bound."""

from __future__ import annotations

from hivemind_worker.doctor.docker_gpu import START_DOCKER, _client, _docker_host
from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, failed, passed, warned

NAME = "docker live-restore"
LIVE_RESTORE_FIX = (
    'put {"live-restore": true} in /etc/docker/daemon.json (merged into what is there), '
    "then: sudo systemctl reload docker (a reload, not a restart: running containers keep running)"
)


def check_live_restore(ctx: DoctorContext) -> list[CheckResult]:
    import docker.errors
    import requests.exceptions

    try:
        client = _client(ctx)
        try:
            info = client.info()
        finally:
            client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        return [failed(NAME, f"cannot ask Docker at {_docker_host()}: {str(exc).splitlines()[0][:200]}", START_DOCKER)]
    if info.get("LiveRestoreEnabled"):
        return [passed(NAME, "on: running tasks survive a restart or upgrade of the Docker engine "
                             "(the worker re-attaches to their logs and exit)")]
    return [warned(NAME, "off: restarting or upgrading the Docker engine stops every running task "
                         "(each ends as lost and the master may run it again elsewhere)", LIVE_RESTORE_FIX)]


LIVE_RESTORE = Check((NAME,), check_live_restore, START_DOCKER)
