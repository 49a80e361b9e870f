"""TaskManager + DockerRuntime + the real task image: bundles run and results come
back intact; cancel, timeout, OOM and failed dependency installs end with the right
status; a flood of log lines arrives complete; an agent killed with SIGKILL is
replaced by a new one that delivers the complete logs and exactly one result."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.support.localhost import LocalTaskHost, sha256_file
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus

pytestmark = pytest.mark.docker
S = TaskStatus
MiB = 1024**2
HERE = Path(__file__).resolve().parent


def manager(settings, rt, host, node_id) -> TaskManager:
    m = TaskManager(settings, rt, host, node_id, capacity=Resources(2000, 2048 * MiB), sampler=None)
    host.manager = m
    return m


def bundle(path: Path, files: dict[str, str]) -> tuple[int, str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    path.write_bytes(buf.getvalue())
    return path.stat().st_size, sha256_file(path)


def result_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


async def finished(m: TaskManager, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while m.held_tasks():
        assert time.monotonic() < end, m.snapshot()
        await asyncio.sleep(0.05)


MAIN = """
import os, sys
print("hello from", os.getuid())
print("to stderr", file=sys.stderr)
out = os.environ["HIVEMIND_OUTPUT_DIR"]
with open(os.path.join(out, "result.txt"), "w") as fh:
    fh.write(open("data/input.txt").read().upper())
os.makedirs(os.path.join(out, "sub"))
open(os.path.join(out, "sub", "blob.bin"), "wb").write(bytes(range(256)) * 100)
"""


class ContainerSeeingHost(LocalTaskHost):
    """Notes which of the node's task containers the engine still has when a result comes."""

    runtime, node_id, at_upload = None, "", None

    async def upload_result(self, task_id: str, archive: Path, *rest, **options) -> None:
        self.at_upload = [c.task_id for c in await self.runtime.list_managed() if c.node_id == self.node_id]
        await super().upload_result(task_id, archive, *rest, **options)


async def test_bundle_runs_and_result_comes_back_intact(tmp_path, settings, docker_runtime, node_id) -> None:
    size, sha = bundle(tmp_path / "b.zip", {"main.py": MAIN, "data/input.txt": "some input"})
    host = ContainerSeeingHost(tmp_path / "results", {"t-main": tmp_path / "b.zip"})
    host.runtime, host.node_id = docker_runtime, node_id
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    await m.assign(TaskRequest("t-main", resources=Resources(500, 256 * MiB), bundle_size=size, bundle_sha256=sha))
    await finished(m)
    assert host.statuses("t-main") == [S.ACCEPTED, S.FETCHING, S.RUNNING, S.EXITED, S.UPLOADING, S.DONE]
    texts = sorted(r.text for r in host.lines["t-main"])
    uid = int(settings.task_user.split(":")[0])
    assert f"hello from {uid}" in texts and "to stderr" in texts
    with pytest.raises(KeyError):  # the task ran under an id no host account has
        pwd.getpwuid(uid)
    files = result_files(host.results["t-main"])
    assert files["output/result.txt"] == b"SOME INPUT"
    assert files["output/sub/blob.bin"] == bytes(range(256)) * 100
    assert f"hello from {uid}" in files["logs.txt"].decode()
    record = json.loads(files["exit.json"])
    assert (record["status"], record["exit_code"]) == ("exited", 0)
    assert not (settings.state_dir / "tasks" / "t-main").exists()
    # The container went once the outcome was journaled, before the upload: the
    # engine is not removing it while it creates the node's next task.
    assert host.at_upload == []
    assert [c for c in await docker_runtime.list_managed() if c.node_id == node_id] == []
    await m.close()


async def test_cancel_timeout_oom_and_failed_deps(tmp_path, settings, docker_runtime, node_id) -> None:
    deps_size, deps_sha = bundle(tmp_path / "d.zip", {"main.py": "print('never')", "requirements.txt": "nosuchpkg==1\n", "wheels/README": "empty"})
    host = LocalTaskHost(tmp_path / "results", {"t-deps": tmp_path / "d.zip"})
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    small = Resources(250, 128 * MiB)
    sleeper = ("python3", "-c", "import time; print('up', flush=True); time.sleep(300)")
    await m.assign(TaskRequest("t-cancel", command=sleeper, resources=small))
    await m.assign(TaskRequest("t-timeout", command=sleeper, resources=small, timeout_s=3))
    hog = ("python3", "-c", "x = []\nwhile True: x.append(bytearray(16 * 1024 * 1024))")
    await m.assign(TaskRequest("t-oom", command=hog, resources=Resources(250, 64 * MiB)))
    await m.assign(TaskRequest("t-deps", resources=small, bundle_size=deps_size, bundle_sha256=deps_sha))
    await host.wait_for(lambda: host.last_seq.get("t-cancel", 0) >= 1, timeout=30)
    await m.cancel("t-cancel", "user asked")
    await finished(m, 90)
    ev = {t: host.final_event(t) for t in ("t-cancel", "t-timeout", "t-oom", "t-deps")}
    assert (ev["t-cancel"].status, ev["t-cancel"].reason) == (S.CANCELLED, "cancelled: user asked")
    assert ev["t-timeout"].status is S.TIMED_OUT and "3 s" in ev["t-timeout"].reason
    assert ev["t-oom"].status is S.OOM_KILLED and "64 MiB" in ev["t-oom"].reason and ev["t-oom"].exit_code == 137
    assert ev["t-deps"].status is S.FAILED and ev["t-deps"].reason.startswith("dependency install failed")
    assert ev["t-deps"].exit_code == 97
    assert host.uploads == {t: 1 for t in ev}
    await m.close()


async def test_200k_lines_arrive_complete_in_order(tmp_path, settings, docker_runtime, node_id) -> None:
    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    n = 200_000
    cmd = ("python3", "-c", f"import sys\nw = sys.stdout.write\nfor i in range({n}): w(f'line {{i}}\\n')")
    t0 = time.monotonic()
    await m.assign(TaskRequest("t-flood", command=cmd, resources=Resources(1000, 256 * MiB)))
    await finished(m, 120)
    elapsed = time.monotonic() - t0
    lines = host.lines["t-flood"]
    assert not host.gaps and host.duplicates == 0
    assert [r.seq for r in lines] == list(range(1, n + 1))
    assert [r.text for r in lines] == [f"line {i}" for i in range(n)]
    print(f"\n200k lines in {elapsed:.2f} s end to end ({n / elapsed:,.0f} lines/s)")
    await m.close()


async def test_sigkilled_agent_replaced_delivers_complete_logs_once(tmp_path, settings, docker_runtime, node_id) -> None:
    n = 4000
    cmd = ["python3", "-c", f"import time\nfor i in range({n}):\n    print(f'n {{i}}', flush=True)\n    time.sleep(0.001)"]
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "agent_proc.py"), str(settings.state_dir), node_id, "t-kill", settings.task_image, str(ready), "--", *cmd],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        end = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "agent process died"
            assert time.monotonic() < end, "task did not start"
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    running = [c for c in await docker_runtime.list_managed() if c.node_id == node_id]
    assert len(running) == 1  # the container outlived the agent

    host = LocalTaskHost(tmp_path / "results")
    m = manager(settings, docker_runtime, host, node_id)
    await m.start()
    await finished(m, 90)
    lines = host.lines["t-kill"]
    assert [r.seq for r in lines] == list(range(1, n + 1)), "gaps or duplicates after the restart"
    assert [r.text for r in lines] == [f"n {i}" for i in range(n)]
    assert host.uploads == {"t-kill": 1}
    assert host.final_event("t-kill").status is S.EXITED
    assert "n 3999" in result_files(host.results["t-kill"])["logs.txt"].decode()
    await m.close()

    again = LocalTaskHost(tmp_path / "again")
    m2 = manager(settings, docker_runtime, again, node_id)
    await m2.start()  # reconciles before it returns: anything still owed would be held now
    assert m2.held_tasks() == [] and again.uploads == {}
    await m2.close()


async def test_pressure_lowers_cpu_weight_of_lower_priority_in_docker(tmp_path, settings, docker_runtime, docker_client, node_id) -> None:
    sample = [(10.0, 10.0)]
    host = LocalTaskHost(tmp_path / "results")
    m = TaskManager(settings, docker_runtime, host, node_id, capacity=Resources(2000, 2048 * MiB),
                    sampler=lambda: sample[0], pressure_interval_s=3600)
    host.manager = m
    await m.start()
    sleeper = ("python3", "-c", "import time; print('up', flush=True); time.sleep(300)")
    await m.assign(TaskRequest("t-hi", command=sleeper, resources=Resources(250, 64 * MiB), priority=9))
    await m.assign(TaskRequest("t-lo", command=sleeper, resources=Resources(250, 64 * MiB), priority=1))
    await host.wait_for(lambda: all(host.last_seq.get(t, 0) >= 1 for t in ("t-hi", "t-lo")), timeout=60)

    def shares(task_id: str) -> int:
        c = docker_client.containers.get(f"hivemind-task-{task_id}")
        return c.attrs["HostConfig"]["CpuShares"]

    sample[0] = (99.0, 10.0)
    await m.check_pressure()
    assert (shares("t-hi"), shares("t-lo")) == (1024, 128)
    await m.assign(TaskRequest("t-new", command=sleeper))
    deferred = host.last_event("t-new")  # not now: the sleepers' own CPU use is next to nothing
    assert deferred.status is TaskStatus.DEFERRED and deferred.reason.startswith("node under pressure (CPU 9")
    sample[0] = (20.0, 10.0)
    await m.check_pressure()
    assert (shares("t-hi"), shares("t-lo")) == (1024, 1024)
    for t in ("t-hi", "t-lo"):
        await m.cancel(t, "test over")
    await finished(m)
    await m.close()
