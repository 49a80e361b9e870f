"""A NON-root agent (the packaged unit's situation) runs a task that fills the state
file system with a file in a directory the task made private; prints a JSON summary,
including what was left of the workspace when the result was uploaded. Started by
test_disk_nonroot.py.

    python nonroot_disk_proc.py STATE_DIR NODE_ID IMAGE
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tarfile
from pathlib import Path

from hivemind_worker.config import Settings
from hivemind_worker.runtime import DockerRuntime
from hivemind_worker.tasks.disk import free_bytes
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest

MiB = 1024**2
FILL = """
import os, time
deep = os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "deep")
os.makedirs(deep)
os.chmod(deep, 0o700)  # the agent can neither list nor delete what is in here
written = 0
with open(os.path.join(deep, "fill.bin"), "wb") as fh:
    while written < 400 * 1024 * 1024:
        try:
            fh.write(b"\\1" * (1024 * 1024)); fh.flush(); written += 1024 * 1024
        except OSError as exc:
            print("write failed:", exc, flush=True); time.sleep(0.2)
"""


class Host(LocalTaskHost):
    at_upload: dict = {}

    async def upload_result(self, task_id: str, archive: Path, *rest, **options) -> None:
        deep = archive.parent / "workspace" / "output" / "deep"
        self.at_upload = {"deep_left": deep.exists(), "free_mib": free_bytes(archive.parent) // MiB}
        await super().upload_result(task_id, archive, *rest, **options)


async def main() -> None:
    state, node, image = sys.argv[1:4]
    settings = Settings(state_dir=Path(state), task_image=image, task_disk_limit_bytes=1024**3,
                        disk_min_free_bytes=16 * MiB, disk_hard_min_free_bytes=8 * MiB)
    host = Host(Path(state).parent / "results")
    rt = DockerRuntime()
    m = TaskManager(settings, rt, host, node, capacity=Resources(1000, 1024**3), sampler=None)
    host.manager = m
    await m.start()
    await m.assign(TaskRequest("t-fill", command=("python3", "-c", FILL), resources=Resources(500, 256 * MiB)))
    for _ in range(1800):
        if not m.held_tasks():
            break
        await asyncio.sleep(0.05)
    with tarfile.open(host.results["t-fill"]) as tar:
        files = sorted(t.name for t in tar.getmembers() if t.isfile())
    ev = host.final_event("t-fill")
    print(json.dumps({
        "uid": os.geteuid(), "status": ev.status.value, "reason": ev.reason, "files": files,
        "at_upload": host.at_upload, "free_mib_after": free_bytes(Path(state)) // MiB,
        "task_dir_left": (Path(state) / "tasks" / "t-fill").exists(), "held": len(m.held_tasks()),
    }))
    await m.close()
    rt.close()


asyncio.run(main())
