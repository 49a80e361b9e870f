"""A stand-in agent process for the SIGKILL test: runs a TaskManager with a
LocalTaskHost that acknowledges nothing, assigns one task, writes READY once the
task's first lines arrived, and runs until killed.

    python agent_proc.py STATE_DIR NODE_ID TASK_ID IMAGE READY_FILE -- CMD...
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from hivemind_worker.config import Settings
from hivemind_worker.runtime import DockerRuntime
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest


async def main() -> None:
    state, node, task_id, image, ready = sys.argv[1:6]
    command = tuple(sys.argv[sys.argv.index("--") + 1 :])
    settings = Settings(state_dir=Path(state), task_image=image)
    host = LocalTaskHost(Path(state) / "first-results", auto_ack=False)
    m = TaskManager(settings, DockerRuntime(), host, node, capacity=Resources(2000, 2 * 1024**3), sampler=None)
    await m.start()
    await m.assign(TaskRequest(task_id, command=command, resources=Resources(500, 256 * 1024**2)))
    await host.wait_for(lambda: host.last_seq.get(task_id, 0) >= 100, timeout=60)
    Path(ready).write_text(str(host.last_seq[task_id]))
    await asyncio.Event().wait()


asyncio.run(main())
