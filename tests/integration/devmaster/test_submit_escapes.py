"""`submit --wait` as a real subprocess against a dev-master and a scripted node whose
task prints escape sequences and ends with a hostile reason: the terminal gets the
text without them (stdout, stderr, the final error line)."""

from __future__ import annotations

import asyncio
import hashlib

from hivemind_worker.proto import worker_pb2 as pb
from tests.integration.devmaster.test_submit_cli import run_cli

ESCAPES = "\x1b\x9b\x07\r\b"


async def test_submit_wait_strips_escape_sequences_from_task_output(master, make_node, tmp_path):
    node = await make_node()
    proc = await run_cli("submit", "--command", "true", "--state-dir", str(master.state.root), "--wait",
                         "--output", str(tmp_path / "out"))
    spec = await node.recv_kind("assign", timeout=30)
    task_id = spec.task_id  # a --command task: no bundle to fetch
    await node.event(task_id, pb.TASK_STATE_ACCEPTED)
    await node.event(task_id, pb.TASK_STATE_RUNNING)
    await node.logs(task_id, [(1, pb.LOG_STREAM_STDOUT, "\x1b]0;owned\x07\x1b[2Jclean\x1b[31m red"),
                              (2, pb.LOG_STREAM_STDERR, "warn\rfake\x9b1;1H line")])
    await node.event(task_id, pb.TASK_STATE_FAILED, exit_code=1, reason="crashed \x1b[8mhidden\x1b[0m")
    result = b"logs and exit record"  # delivered, so --wait ends without its result grace period
    await node.event(task_id, pb.TASK_STATE_UPLOADING)
    await node.upload(task_id, result, hashlib.sha256(result).hexdigest())
    await node.recv_kind("result_ack")
    await node.event(task_id, pb.TASK_STATE_DONE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    stdout, stderr = stdout.decode(), stderr.decode()
    assert proc.returncode == 7, stderr
    assert stdout.splitlines() == ["clean red"]
    assert "warnfake line" in stderr and "crashed hidden" in stderr.splitlines()[-1]
    assert not any(c in stdout + stderr for c in ESCAPES), repr(stdout + stderr)
