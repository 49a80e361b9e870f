"""A node must not be able to fill the master's disk: result and log limits, refused
or cut with the reason. And what `dev-master nodes` / `tasks` show of drains and
attempts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import grpc
import pytest

from hivemind_worker.devmaster import submit as submit_core
from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.taskdb import LogLimits
from hivemind_worker.proto import worker_pb2 as pb
from tests.conftest import cli
from tests.integration.devmaster.peer import wait_for


def queue(master) -> str:
    return submit_core.submit(master.state, submit_core.SubmitRequest(bundle=b"", spec={"cpu_millicores": 1000}))


@pytest.mark.parametrize("master", [{"max_result_bytes": 100_000}], indirect=True)
async def test_oversized_result_is_refused_with_the_reason(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    data = os.urandom(150_000)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.upload(task_id, data, digest)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "150000 bytes, more than this master accepts (100000" in err.value.details()
    assert "--max-result-bytes" in err.value.details()
    # A node that announces a small archive and sends more is cut off at the limit.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.upload(task_id, data, digest, total=50_000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more bytes than total_bytes" in err.value.details()
    held = master.state.result_part(task_id)
    assert not held.exists() or held.stat().st_size <= 50_000
    assert not master.state.result(task_id).exists()
    assert taskdb.get_task(db, task_id)["result_complete"] == 0


@pytest.mark.parametrize("master", [{"log_limits": LogLimits(max_lines=20, max_bytes=2000, max_line_bytes=100)}],
                         indirect=True)
async def test_log_flood_is_cut_at_the_limit_and_says_so(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    await node.logs(task_id, [(1, pb.LOG_STREAM_STDOUT, "x" * 5000)])
    assert (await node.recv_kind("log_ack")).seq == 1
    flood = [(seq, pb.LOG_STREAM_STDOUT, f"line {seq} " + "y" * 40) for seq in range(2, 5002)]
    for start in range(0, len(flood), 500):
        await node.logs(task_id, flood[start:start + 500])
    # Everything is acknowledged (the node frees its spool), little is stored.
    await wait_for(lambda: taskdb.contiguous_seq(db, task_id) == 5001, what="the whole flood acknowledged")
    for _ in range(10):
        if (await node.recv_kind("log_ack")).seq == 5001:
            break
    else:
        pytest.fail("no log_ack up to 5001")
    rows = taskdb.logs_after(db, task_id, 0, limit=10_000)
    assert len(rows) <= 20 and sum(len(r["text"]) for r in rows) <= 2000 + 200
    assert rows[0]["text"].startswith("x" * 100) and "line cut by the dev-master: 5000 bytes" in rows[0]["text"]
    assert rows[-1]["stream"] == "system" and "log limit reached" in rows[-1]["text"]
    assert "--max-log-lines/--max-log-bytes" in rows[-1]["text"]


async def test_nodes_show_the_drain_reason_and_tasks_the_attempt(master, make_node, db):
    node = await make_node(draining=True, drain_reason="shutdown")
    state = str(master.state.root)
    listed = await asyncio.to_thread(cli, "dev-master", "nodes", "--state-dir", state)
    assert listed.returncode == 0 and "yes (shutdown)" in listed.stdout.splitlines()[-1]
    as_json = json.loads((await asyncio.to_thread(cli, "dev-master", "nodes", "--state-dir", state, "--json")).stdout)
    assert as_json[0]["drain_reason"] == "shutdown"

    await node.send(drain=pb.Drain(draining=False))
    task_id = queue(master)
    await node.recv_kind("assign")
    await node.event_acked(task_id, pb.TASK_STATE_EXITED, 1, attempt=1, exit_code=9, reason="exited with code 9")
    tasks = await asyncio.to_thread(cli, "dev-master", "tasks", "--state-dir", state)
    header, row = tasks.stdout.splitlines()[0], tasks.stdout.splitlines()[-1]
    assert header.split()[:7] == ["TASK", "TRY", "STATE", "NODE", "OUTCOME", "EXIT", "RESULT"]
    assert row.split()[:6] == [task_id, "1", "exited", node.node_id, "exited", "9"]
    assert row.endswith("exited with code 9")
