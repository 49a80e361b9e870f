"""`hivemind-worker submit --wait` and the dev-master CLI as real subprocesses,
against a dev-master and a scripted node speaking the protocol."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import zipfile

import pytest

from hivemind_worker.proto import worker_pb2 as pb
from tests.conftest import cli


async def run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hivemind_worker", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
def bundle_dir(tmp_path):
    src = tmp_path / "job"
    (src / "pkg").mkdir(parents=True)
    (src / "main.py").write_text("print('hi')\n")
    (src / "pkg" / "data.txt").write_text("data\n")
    os.symlink("/etc/passwd", src / "leak")  # links are left out of the bundle
    return src


async def play_task(node, outcome: int, exit_code: int = 0, reason: str = "", result: bytes | None = None):
    """What a worker does with one assignment, scripted."""
    spec = await node.recv_kind("assign", timeout=30)
    task_id = spec.task_id
    data = b"".join([c.data async for c in node.stub.FetchBundle(pb.FetchBundleRequest(task_id=task_id), metadata=node.meta)])
    assert hashlib.sha256(data).hexdigest() == spec.bundle.sha256
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    if outcome == pb.TASK_STATE_REJECTED:
        await node.event(task_id, outcome, reason=reason)
        return task_id, names
    await node.event(task_id, pb.TASK_STATE_ACCEPTED)
    await node.event(task_id, pb.TASK_STATE_RUNNING)
    await node.logs(task_id, [(1, pb.LOG_STREAM_STDOUT, "hello from the task"),
                              (2, pb.LOG_STREAM_STDERR, "a warning")])
    await node.logs(task_id, [(3, pb.LOG_STREAM_STDOUT, "done computing")])
    await node.event(task_id, outcome, exit_code=exit_code, reason=reason)
    if result is not None:
        await node.event(task_id, pb.TASK_STATE_UPLOADING)
        await node.upload(task_id, result, hashlib.sha256(result).hexdigest())
        await node.recv_kind("result_ack")
        await node.event(task_id, pb.TASK_STATE_DONE)
    return task_id, names


async def test_submit_wait_streams_logs_saves_result_and_exits_with_task_code(master, make_node, bundle_dir, tmp_path):
    node = await make_node()
    out = tmp_path / "out"
    proc = await run_cli("submit", str(bundle_dir), "--state-dir", str(master.state.root), "--wait",
                         "--output", str(out), "--cpus", "0.5", "--memory", "256m", "--timeout", "1m")
    result = os.urandom(5000)
    task_id, names = await play_task(node, pb.TASK_STATE_EXITED, exit_code=3, result=result)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    stdout, stderr = stdout.decode(), stderr.decode()
    assert names == ["main.py", "pkg/data.txt"]
    assert proc.returncode == 3, stderr
    assert stdout.splitlines() == ["hello from the task", "done computing"]
    assert "a warning" in stderr and f"task {task_id} exited with code 3" in stderr
    saved = out / f"{task_id}.tar.gz"
    assert saved.read_bytes() == result and str(saved) in stderr


@pytest.mark.parametrize("state, code, reason, expected", [
    (pb.TASK_STATE_TIMED_OUT, 137, "killed after its 60 s timeout", 124),
    (pb.TASK_STATE_REJECTED, 0, "needs 64 CPU cores, 4 are free", 7),
    (pb.TASK_STATE_OOM_KILLED, 137, "memory limit 256 MiB reached", 137),
])
async def test_submit_wait_maps_endings_to_exit_codes(master, make_node, bundle_dir, tmp_path, state, code, reason, expected):
    node = await make_node()
    proc = await run_cli("submit", str(bundle_dir), "--state-dir", str(master.state.root), "--wait",
                         "--output", str(tmp_path / "out"))
    result = b"partial" if state != pb.TASK_STATE_REJECTED else None
    await play_task(node, state, exit_code=code, reason=reason, result=result)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == expected
    assert reason in stderr.decode().splitlines()[-1]


def test_cli_commands_on_the_state_directory(master, tmp_path):
    state = str(master.state.root)
    token = cli("dev-master", "token", "create", "--state-dir", state, "--ttl", "10m", "--uses", "2")
    assert token.returncode == 0 and token.stdout.strip().startswith("hmt_") and len(token.stdout.splitlines()) == 1
    ca_hash = cli("dev-master", "ca-hash", "--state-dir", state)
    assert ca_hash.stdout.strip() == master.master.ca_hash
    nodes = cli("dev-master", "nodes", "--state-dir", state, "--json")
    assert nodes.returncode == 0 and json.loads(nodes.stdout) == []
    bad = cli("dev-master", "token", "create", "--state-dir", state, "--ttl", "forever")
    assert bad.returncode != 0 and "30s, 10m, 1h, 2d" in bad.stderr
    revoke = cli("dev-master", "nodes", "revoke", "node-nope", "--state-dir", state)
    assert revoke.returncode != 0 and "dev-master nodes" in revoke.stderr
    task = cli("submit", "--command", "echo hi", "--state-dir", state, "--cpus", "64")
    task_id = task.stdout.strip()
    assert task.returncode == 0 and task_id.startswith("task-")
    listed = json.loads(cli("dev-master", "tasks", "--state-dir", state, "--json").stdout)
    assert [(t["task_id"], t["state"], t["spec"]["command"]) for t in listed] == [(task_id, "queued", ["echo", "hi"])]
    cancel = cli("dev-master", "cancel", task_id, "--state-dir", state)
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout
    missing = cli("dev-master", "nodes", "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "dev-master serve" in missing.stderr


def test_insecure_is_refused_off_loopback(tmp_path):
    done = cli("dev-master", "serve", "--state-dir", str(tmp_path / "m"), "--listen", "0.0.0.0:0", "--insecure")
    assert done.returncode == 2 and "loopback only" in done.stderr


def test_a_second_serve_on_the_same_state_is_refused(master):
    done = cli("dev-master", "serve", "--state-dir", str(master.state.root), "--listen", "127.0.0.1:0", timeout=30)
    assert done.returncode == 2 and "another `dev-master serve` is running" in done.stderr
