"""Drill 6: SIGKILL of the worker daemon while it uploads a large result, then a
restart: the result arrives whole, exactly once, and the master has the outcome."""

from __future__ import annotations

import hashlib
import tarfile

import pytest

from tests.faults.drill import (
    assert_agree, assert_healthy, describe, log_lines, result_archive, task_events, wait_connected, wait_final,
)
from tests.support.stack import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(420)]

BLOB_MB = 64
# Incompressible, so the archive is as large as the blob and the upload takes a while.
WRITER = f"""\
import hashlib, os
data = os.urandom({BLOB_MB} << 20)
open(os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "blob.bin"), "wb").write(data)
print("line sha256", hashlib.sha256(data).hexdigest(), flush=True)
"""


def test_agent_sigkill_during_result_upload(master, node, submit_wait, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "main.py").write_text(WRITER)
    waiter = submit_wait(str(tmp_path / "bundle"), "--cpus", "1", "--memory", "512m")
    task_id = waiter.task_id
    results = master.state / "results"

    def uploading():
        return sum(p.stat().st_size for p in results.glob(f"{task_id}*.part")) if results.exists() else 0

    wait_for(uploading, 240, "the result upload to start", interval=0.01)
    node.proc.kill()  # SIGKILL: no drain, no goodbye
    node.proc.wait(10)
    partial = uploading()
    assert 0 < partial < BLOB_MB << 20, f"not killed mid-upload ({partial} bytes had arrived)"
    node.start()

    row = wait_final(master, task_id, 240, node)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), describe(master, task_id, node)
    code, _, stderr = waiter.finish(15)
    assert code == 0, stderr[-2000:]
    with tarfile.open(result_archive(master, task_id)) as tar:
        blob = tar.extractfile("output/blob.bin").read()
    lines = [r["text"] for r in log_lines(master, task_id) if r["text"].startswith("line ")]
    assert lines == [f"line sha256 {hashlib.sha256(blob).hexdigest()}"], "the blob is the one the task wrote"
    # Exactly once: one archive, one outcome, one "done" on the master.
    assert [p.name for p in results.iterdir() if p.name.startswith(task_id)] == [f"{task_id}.tar.gz"]
    states = [e["state"] for e in task_events(master, task_id)]
    assert states.count("exited") == 1 and states.count("done") == 1, f"events applied more than once: {states}"
    wait_connected(master, node)
    assert_healthy(master, node)
    assert_agree(master, node)
