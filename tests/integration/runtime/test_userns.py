"""Tasks on an engine with userns-remap (a PRIVATE engine; the shared dockerd is never
reconfigured): the task user maps to an unprivileged subordinate host id, the
runtime gives the workspace to that id, and the task still writes its output.

userns-remap "default" makes dockerd create the `dockremap` user and its /etc/subuid
and /etc/subgid ranges; the test removes them again if they were not there before."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hivemind_worker.runtime import DockerRuntime
from tests.support.engine import Engine

from .conftest import run_to_end

pytestmark = [pytest.mark.docker, pytest.mark.root]


def drop_dockremap() -> None:
    subprocess.run(["userdel", "dockremap"], capture_output=True)
    subprocess.run(["groupdel", "dockremap"], capture_output=True)
    for name in ("/etc/subuid", "/etc/subgid"):
        path = Path(name)
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if not line.startswith("dockremap:")]
            path.write_text("".join(line + "\n" for line in kept))


@pytest.fixture(scope="module")
def remapped_engine(task_image):
    fresh = subprocess.run(["getent", "passwd", "dockremap"], capture_output=True).returncode != 0
    try:
        with Engine(config={"userns-remap": "default"}) as engine:
            engine.load_image(task_image)
            yield engine
    finally:
        if fresh:
            drop_dockremap()


async def test_the_task_user_is_an_unprivileged_host_id_and_still_writes(remapped_engine, make_spec, workspace):
    rt = DockerRuntime(client_factory=remapped_engine.client)
    try:
        script = "id -u; cat /proc/self/uid_map; echo done > $HIVEMIND_OUTPUT_DIR/result.txt"
        ran = await run_to_end(rt, make_spec(command=("sh", "-c", script)))
        assert ran.exit.exit_code == 0, ran.text()
        lines = ran.text().splitlines()
        assert lines[0] == "65100"
        inside, outside, count = (int(x) for x in lines[1].split())
        assert inside == 0 and outside >= 65536 and count >= 65536, lines  # container root is not host root
        result = workspace / "output" / "result.txt"
        assert result.read_text() == "done\n"
        owner = os.stat(result).st_uid
        assert owner == outside + 65100 != 65100  # the host sees a subordinate id
    finally:
        rt.close()
