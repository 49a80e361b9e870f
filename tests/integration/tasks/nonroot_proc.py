"""Runs one bundle task to DONE with a TaskManager in a process that is NOT root
(the packaged systemd unit's situation: a service user in the docker group), then
prints a JSON summary. Started by test_nonroot_agent.py.

    python nonroot_proc.py STATE_DIR NODE_ID IMAGE BUNDLE_ZIP
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
from tests.support.localhost import LocalTaskHost, sha256_file
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest


async def main() -> None:
    state, node, image, bundle = sys.argv[1:5]
    settings = Settings(state_dir=Path(state), task_image=image)
    host = LocalTaskHost(Path(state) / "results", {"t-nonroot": Path(bundle)})
    rt = DockerRuntime()
    m = TaskManager(settings, rt, host, node, capacity=Resources(1000, 1024**3), sampler=None)
    host.manager = m
    await m.start()
    size = Path(bundle).stat().st_size
    await m.assign(TaskRequest("t-nonroot", resources=Resources(500, 256 * 1024**2), bundle_size=size,
                               bundle_sha256=sha256_file(Path(bundle))))
    for _ in range(1200):
        if not m.held_tasks():
            break
        await asyncio.sleep(0.05)
    with tarfile.open(host.results["t-nonroot"]) as tar:
        files = {t.name: tar.extractfile(t).read().decode() for t in tar.getmembers() if t.isfile()}
    ev = host.final_event("t-nonroot")
    print(json.dumps({
        "uid": os.geteuid(),
        "status": ev.status.value, "reason": ev.reason,
        "files": sorted(files), "result": files.get("output/deep/er/result.txt", ""),
        "task_dir_left": (Path(state) / "tasks" / "t-nonroot").exists(),
        "held": len(m.held_tasks()),
    }))
    await m.close()
    rt.close()


asyncio.run(main())
