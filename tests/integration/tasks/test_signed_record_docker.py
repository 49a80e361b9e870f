"""The signed usage record beside a real task's result (TaskManager + DockerRuntime +
the task image): every field is the task's (id, attempt, node, image that ran,
bundle and result sha256 matching the files, outcome, exit code, times, limits,
measured CPU and memory) and the signature verifies with the host's key; the upload
carries exactly the record that was written."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from hivemind_worker import usage
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest
from tests.support.localhost import LocalTaskHost, sha256_file
from tests.support.wait import until

pytestmark = pytest.mark.docker
MiB = 1024**2

MAIN = """
import os, time
t = time.process_time()
while time.process_time() - t < 2.0: pass  # 2 s of CPU: the meter may miss the last 1 s interval
open(os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "out.txt"), "w").write("done")
raise SystemExit(int(os.environ.get("CODE", "0")))
"""


def bundle(path: Path) -> tuple[int, str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", MAIN)
    path.write_bytes(buf.getvalue())
    return path.stat().st_size, sha256_file(path)


@pytest.mark.parametrize("code,state", [(0, "exited"), (3, "exited")])  # a non-zero exit is "exited" too
async def test_the_record_beside_a_real_result(tmp_path, settings, docker_runtime, node_id, code, state) -> None:
    size, sha = bundle(tmp_path / "b.zip")
    host = LocalTaskHost(tmp_path / "results", {"t-rec": tmp_path / "b.zip"}, auto_ack=False)
    m = TaskManager(settings, docker_runtime, host, node_id, capacity=Resources(2000, 2048 * MiB), sampler=None)
    host.manager = m
    await m.start()
    began_ms = int(time.time() * 1000)
    await m.assign(TaskRequest("t-rec", resources=Resources(500, 256 * MiB), bundle_size=size, bundle_sha256=sha,
                               env={"CODE": str(code)}, attempt=3))
    await until(lambda: "t-rec" in host.results, timeout=120, what="the result upload")
    ended_ms = int(time.time() * 1000)

    # What was written beside the spooled archive is what the upload carried.
    spooled = settings.state_dir / "tasks" / "t-rec" / "result.tar.gz"
    beside = spooled.with_name("result.tar.gz.usage")
    assert beside.stat().st_mode & 0o777 == 0o600
    signed = host.usage["t-rec"]
    assert signed is not None and beside.read_bytes() == signed.signature.hex().encode() + b"\n" + signed.record
    record = usage.verify(signed, usage.public_key_bytes(host.usage_key))

    archive = host.results["t-rec"]
    assert (record["result_sha256"], record["result_bytes"]) == (sha256_file(archive), archive.stat().st_size)
    assert (record["node_id"], record["task_id"], record["attempt"], record["bundle_sha256"]) == (node_id, "t-rec", 3, sha)
    assert (record["state"], record["exit_code"]) == (state, code)
    with tarfile.open(archive) as tar:
        exit_info = json.loads(tar.extractfile("exit.json").read())
    assert (record["state"], record["reason"]) == (exit_info["status"], exit_info["reason"])
    assert began_ms <= record["started_ms"] <= record["ended_ms"] <= ended_ms
    assert (record["cpu_limit_millicores"], record["memory_limit_bytes"]) == (500, 256 * MiB)
    assert record["image_digest"].startswith("sha256:")
    assert 0.8 <= record["cpu_seconds"] <= 6.0, record
    assert 0 < record["memory_avg_bytes"] <= record["memory_peak_bytes"] <= 256 * MiB
    assert record["gpus"] == []  # no GPU on this machine, none given

    await m.ack_result("t-rec", 3)
    await until(lambda: not m.held_tasks(), timeout=60, what="the task's end")
    assert not beside.exists()  # goes with the task's directory
    await m.close()
