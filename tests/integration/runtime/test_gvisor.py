"""Tasks under gVisor (task_runtime = "runsc") on a PRIVATE engine that registers
Debian's runsc (the shared dockerd is never reconfigured): the product's hardened
container runs there, under the task uid, on gVisor's kernel, and a fork-heavy task
is not starved by gVisor's own threads in its pids cgroup."""

from __future__ import annotations

import shutil

import pytest

from hivemind_worker.runtime import DockerRuntime
from tests.support.engine import Engine

from .conftest import run_to_end

pytestmark = [pytest.mark.docker, pytest.mark.root]

RUNSC = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}


@pytest.fixture(scope="module")
def gvisor_engine(task_image):
    if not shutil.which("runsc"):
        pytest.fail("runsc is missing: apt-get install runsc (scripts/install-test-deps.sh)")
    with Engine(config={"runtimes": RUNSC}) as engine:
        engine.load_image(task_image)
        yield engine


async def test_a_task_runs_under_gvisor_as_the_task_user(gvisor_engine, make_spec):
    rt = DockerRuntime(client_factory=gvisor_engine.client)
    try:
        script = "import os; print(os.getuid(), os.getgid()); print(open('/proc/version').read())"
        ran = await run_to_end(rt, make_spec(command=("python3", "-c", script), runtime="runsc", pids_limit=64))
        assert ran.exit.exit_code == 0, ran.text()
        lines = ran.text().splitlines()
        assert lines[0] == "65100 65100"
        # gVisor's Sentry answers /proc/version with its own kernel, not the host's.
        host = open("/proc/version").read()
        assert lines[1] != host.strip() and "Linux version 4.4.0" in lines[1], lines
        forks = "import subprocess; [subprocess.run(['true'], check=True) for _ in range(20)]; print('forked')"
        ran = await run_to_end(rt, make_spec(command=("python3", "-c", forks), runtime="runsc", pids_limit=64))
        assert ran.exit.exit_code == 0 and "forked" in ran.text(), ran.text()
    finally:
        rt.close()
