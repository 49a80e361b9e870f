"""Docker engine restarts mid-task, for real, on a PRIVATE dockerd
(tests/support/engine.py; the shared engine is never touched):

- without live-restore the engine stops the container: the task ends LOST with the
  cause (not "exited with code 143"), with its logs so far and exactly one result;
- with live-restore the container keeps running: the node re-attaches and the task
  finishes normally, every log line exactly once;
- a container removed behind the node's back: LOST ("vanished");
- `doctor` says whether live-restore is on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from hivemind_worker.doctor.engine import check_live_restore
from hivemind_worker.doctor.model import DoctorContext, Outcome
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus
from tests.support.engine import Engine

pytestmark = [pytest.mark.docker, pytest.mark.root]
S = TaskStatus
MiB = 1024**2
LINES = 120
TICKER = f"import time\nfor i in range({LINES}):\n    print('line', i, flush=True)\n    time.sleep(0.1)\n"


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "live-restore"])
def engine(request, task_image):
    with Engine(live_restore=request.param) as e:
        e.load_image(task_image)
        yield e


@pytest.fixture
def node(tmp_path: Path, task_image: str, engine: Engine, monkeypatch):
    """A TaskManager on the private engine (through DOCKER_HOST, as an operator would)."""
    from hivemind_worker.runtime import DockerRuntime

    monkeypatch.setenv("DOCKER_HOST", engine.host)
    rt = DockerRuntime()  # DOCKER_HOST: the private engine
    settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_image=task_image,
                        task_timeout_s=120, disk_min_free_bytes=0, disk_hard_min_free_bytes=0)
    host = LocalTaskHost(tmp_path / "results")
    m = TaskManager(settings, rt, host, f"engine-{uuid.uuid4().hex[:8]}", capacity=Resources(2000, 2048 * MiB),
                    sampler=None)
    host.manager = m
    yield m, host
    rt.close()


async def settled(m: TaskManager, timeout: float) -> None:
    end = time.monotonic() + timeout
    while m.held_tasks():
        assert time.monotonic() < end, m.snapshot()
        await asyncio.sleep(0.1)


async def test_engine_restart_mid_task(engine: Engine, node) -> None:
    m, host = node
    await m.start()
    await m.assign(TaskRequest("t-restart", command=("python3", "-c", TICKER), resources=Resources(500, 128 * MiB)))
    await host.wait_for(lambda: host.last_seq.get("t-restart", 0) >= 15, timeout=60)
    started = time.monotonic()
    await asyncio.to_thread(engine.restart)
    restart_s = time.monotonic() - started
    await settled(m, 90)
    ev = host.final_event("t-restart")
    texts = [r.text for r in host.lines["t-restart"]]
    assert host.duplicates == 0 and [r.seq for r in host.lines["t-restart"]] == list(range(1, len(texts) + 1))
    assert host.uploads == {"t-restart": 1}
    if engine.live_restore:
        assert (ev.status, ev.exit_code, ev.reason) == (S.EXITED, 0, "exited with code 0"), ev
        assert texts == [f"line {i}" for i in range(LINES)]  # every line once, in order
    else:
        assert ev.status is S.LOST and ev.exit_code in (137, 143), ev
        assert ev.reason.startswith("lost: the Docker engine restarted and stopped the container"), ev
        assert texts == [f"line {i}" for i in range(len(texts))] and len(texts) < LINES
    print(f"\n{'live-restore' if engine.live_restore else 'plain'}: restart took {restart_s:.1f} s; "
          f"{ev.status.value} ({ev.reason}); {len(texts)} lines")
    await m.close()


async def test_a_container_removed_behind_the_nodes_back_is_lost(engine: Engine, node) -> None:
    m, host = node
    await m.start()
    await m.assign(TaskRequest("t-gone", command=("python3", "-c", TICKER), resources=Resources(500, 128 * MiB)))
    await host.wait_for(lambda: host.last_seq.get("t-gone", 0) >= 5, timeout=60)
    cid = next(t["container_id"] for t in m.snapshot() if t["task_id"] == "t-gone")
    engine.docker("rm", "-f", cid)
    await settled(m, 60)
    ev = host.final_event("t-gone")
    assert ev.status is S.LOST and "vanished" in ev.reason, ev
    assert host.uploads == {"t-gone": 1}
    await m.close()


def test_doctor_says_whether_live_restore_is_on(engine: Engine, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    [result] = check_live_restore(DoctorContext(settings=Settings()))
    if engine.live_restore:
        assert result.outcome is Outcome.PASS and result.detail.startswith("on:"), result
    else:
        assert result.outcome is Outcome.WARN and "stops every running task" in result.detail, result
        assert '{"live-restore": true}' in result.fix and "/etc/docker/daemon.json" in result.fix
