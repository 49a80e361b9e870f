"""Nothing lost, master side: sequenced events applied once, "not now" back in the
queue, lost tasks run again as new attempts, absent nodes, stale attempts dropped.
A real dev-master over loopback gRPC; scripted nodes send crafted messages."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

import pytest

from hivemind_worker.devmaster import submit as submit_core
from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.attempts import RetryPolicy
from hivemind_worker.proto import worker_pb2 as pb
from tests.integration.devmaster.peer import wait_for

MiB = 1024 * 1024
S = pb  # states read better as S.TASK_STATE_...


def queue(master, **spec) -> str:
    request = submit_core.SubmitRequest(bundle=b"", spec={"cpu_millicores": 1000, "memory_bytes": 256 * MiB, **spec})
    return submit_core.submit(master.state, request)


def history(db, task_id: str) -> list[tuple[int, str]]:
    return [(e["attempt"], e["state"]) for e in taskdb.events(db, task_id)]


async def settle_on_node(node, task_id: str, attempt: int, first_seq: int, data: bytes = b"archive") -> None:
    """What a node does after an outcome: upload the result, UPLOADING, DONE."""
    reply = await node.upload(task_id, data, hashlib.sha256(data).hexdigest(), attempt=attempt)
    assert reply.complete
    assert (await node.recv_kind("result_ack")).attempt == attempt
    assert (await node.event_acked(task_id, S.TASK_STATE_UPLOADING, first_seq, attempt=attempt)).seq == first_seq
    assert (await node.event_acked(task_id, S.TASK_STATE_DONE, first_seq + 1, attempt=attempt)).seq == first_seq + 1


async def test_duplicate_and_out_of_order_events_are_applied_once(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    spec = await node.recv_kind("assign")
    assert spec.attempt == 1 and not spec.no_retry
    ack = await node.event_acked(task_id, S.TASK_STATE_ACCEPTED, 1, attempt=1)
    assert (ack.task_id, ack.attempt, ack.seq) == (task_id, 1, 1)
    # Seq 3 before seq 2: a gap, neither applied nor acknowledged. The next ack on the
    # stream is the duplicate's (1), not 3.
    await node.event(task_id, S.TASK_STATE_EXITED, seq=3, attempt=1, exit_code=5)
    assert (await node.event_acked(task_id, S.TASK_STATE_ACCEPTED, 1, attempt=1)).seq == 1
    assert taskdb.get_task(db, task_id)["outcome"] is None
    assert (await node.event_acked(task_id, S.TASK_STATE_RUNNING, 2, attempt=1)).seq == 2
    assert (await node.event_acked(task_id, S.TASK_STATE_EXITED, 3, attempt=1, exit_code=5)).seq == 3
    assert (await node.event_acked(task_id, S.TASK_STATE_EXITED, 3, attempt=1, exit_code=5)).seq == 3
    assert (await node.event_acked(task_id, S.TASK_STATE_RUNNING, 2, attempt=1)).seq == 3  # old: ignored
    row = taskdb.get_task(db, task_id)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("exited", "exited", 5)
    assert history(db, task_id) == [(1, "assigned"), (1, "accepted"), (1, "running"), (1, "exited")]
    # Progress (seq 0) is stored, never acknowledged; the next ack is seq 4's.
    await node.event(task_id, S.TASK_STATE_UPLOADING, detail="progress")
    assert (await node.event_acked(task_id, S.TASK_STATE_DONE, 4, attempt=1)).seq == 4


async def run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "hivemind_worker", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_exit_event_resent_after_a_reconnect_settles_submit_wait(master, make_node, db, tmp_path):
    node = await make_node()
    proc = await run_cli("submit", "--command", "python -c 'exit(4)'", "--state-dir", str(master.state.root),
                         "--wait", "--output", str(tmp_path / "out"))
    spec = await node.recv_kind("assign", timeout=30)
    task_id = spec.task_id
    await node.event_acked(task_id, S.TASK_STATE_ACCEPTED, 1, attempt=1)
    await node.event_acked(task_id, S.TASK_STATE_RUNNING, 2, attempt=1)
    await node.logs(task_id, [(1, pb.LOG_STREAM_STDOUT, "before the outage")])
    await node.recv_kind("log_ack")
    node.call.cancel()  # the master becomes unreachable; the task exits meanwhile
    await wait_for(lambda: taskdb.get_task(db, task_id) and master.master.sessions.sessions.get(node.node_id) is None,
                   what="the session to end")

    await node.connect(held=(pb.HeldTask(task_id=task_id, state=S.TASK_STATE_EXITED, attempt=1,
                                         result_pending=True),))
    assert (await node.recv_kind("event_ack")).seq == 2  # what the master holds, told at hello
    # The node resends every unacknowledged event: the exit record first.
    assert (await node.event_acked(task_id, S.TASK_STATE_EXITED, 3, attempt=1, exit_code=4,
                                   reason="exited with code 4")).seq == 3
    await settle_on_node(node, task_id, 1, 4, data=b"the result")
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 4, stderr.decode()
    assert stdout.decode().splitlines() == ["before the outage"]
    assert f"task {task_id} exited with code 4" in stderr.decode()
    assert (tmp_path / "out" / f"{task_id}.tar.gz").read_bytes() == b"the result"


async def test_deferred_task_goes_to_another_node(master, make_node, db):
    busy = await make_node("busy")
    task_id = queue(master)
    assert (await busy.recv_kind("assign")).task_id == task_id
    other = await make_node("other")
    await busy.event(task_id, S.TASK_STATE_DEFERRED, attempt=1, reason="node under pressure (CPU 99% > 90%)")
    spec = await other.recv_kind("assign", timeout=5)
    assert spec.task_id == task_id and spec.attempt == 1
    row = taskdb.get_task(db, task_id)
    assert row["node_id"] == other.node_id and row["deferred_by"] == busy.node_id
    # Once it runs, the deferral is over.
    await other.event_acked(task_id, S.TASK_STATE_ACCEPTED, 1, attempt=1)
    assert taskdb.get_task(db, task_id)["first_deferred_at"] is None


async def test_deferred_task_comes_back_after_a_growing_backoff(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    gaps = []
    for _ in range(2):
        deferred_at = time.monotonic()
        await node.event(task_id, S.TASK_STATE_DEFERRED, attempt=1, reason="node full (2 of 2 task slots)")
        assert (await node.recv_kind("assign", timeout=10)).task_id == task_id
        gaps.append(time.monotonic() - deferred_at)
    assert 0.9 <= gaps[0] < 1.9 and 1.9 <= gaps[1] < 3.5, gaps  # 1 s, then 2 s
    row = taskdb.get_task(db, task_id)
    assert row["defer_count"] == 2 and row["outcome"] is None


@pytest.mark.parametrize("master", [{"retry": RetryPolicy(defer_limit_s=1.5)}], indirect=True)
async def test_deferred_too_long_ends_rejected_with_the_last_reason(master, make_node, db, tmp_path):
    node = await make_node()
    task_id = queue(master)

    async def keep_deferring() -> None:
        while True:
            spec = await node.recv_kind("assign", timeout=60)
            await node.event(spec.task_id, S.TASK_STATE_DEFERRED, attempt=1, reason="node is draining (shutdown)")

    deferring = asyncio.ensure_future(keep_deferring())
    try:
        outcome = await asyncio.wait_for(asyncio.to_thread(
            submit_core.wait, master.state, task_id, tmp_path / "out", poll_s=0.05), 15)
    finally:
        deferring.cancel()
    assert (outcome.outcome, outcome.exit_code) == ("rejected", 7)
    assert "no node would run it" in outcome.message and "node is draining (shutdown)" in outcome.message


async def test_lost_runs_again_as_new_attempts_up_to_the_limit(master, make_node, db, tmp_path):
    node = await make_node()
    task_id = queue(master)
    for attempt in (1, 2, 3):
        spec = await node.recv_kind("assign", timeout=10)
        assert (spec.task_id, spec.attempt) == (task_id, attempt)
        await node.event_acked(task_id, S.TASK_STATE_RUNNING, 1, attempt=attempt)
        await node.event_acked(task_id, S.TASK_STATE_LOST, 2, attempt=attempt, reason="docker engine restarted")
        # Not given again while the old attempt is unsettled on its node.
        await master.full_pass()
        row = taskdb.get_task(db, task_id)
        assert (row["attempt"], row["state"], row["outcome"]) == (attempt, "lost", "lost")
        await settle_on_node(node, task_id, attempt, 3, data=f"attempt {attempt}".encode())
    await master.full_pass()
    row = taskdb.get_task(db, task_id)
    assert (row["attempt"], row["state"], row["outcome"], row["retry_pending"]) == (3, "done", "lost", 0)
    assert [a for a, s in history(db, task_id) if s == "lost"] == [1, 2, 3]
    for attempt in (1, 2):  # earlier attempts' archives are kept
        assert (master.state.results / f"{task_id}.attempt-{attempt}.tar.gz").read_bytes() == f"attempt {attempt}".encode()
    outcome = await asyncio.to_thread(submit_core.wait, master.state, task_id, tmp_path / "out", poll_s=0.05)
    assert (outcome.outcome, outcome.exit_code) == ("lost", 7)
    assert "docker engine restarted" in outcome.message and "no retries left" in outcome.message


async def test_no_retry_task_is_not_run_again(master, make_node, db, tmp_path):
    node = await make_node()
    task_id = queue(master, no_retry=True)
    spec = await node.recv_kind("assign")
    assert spec.no_retry
    await node.event_acked(task_id, S.TASK_STATE_LOST, 1, attempt=1, reason="container vanished")
    await settle_on_node(node, task_id, 1, 2)
    await master.full_pass()
    row = taskdb.get_task(db, task_id)
    assert (row["attempt"], row["state"], row["outcome"]) == (1, "done", "lost")
    outcome = await asyncio.to_thread(submit_core.wait, master.state, task_id, tmp_path / "out", poll_s=0.05)
    assert outcome.exit_code == 7 and "--no-retry" in outcome.message


@pytest.mark.parametrize("master", [{"retry": RetryPolicy(node_lost_after_s=1.0)}], indirect=True)
async def test_absent_node_loses_its_task_and_a_stale_attempt_is_dropped(master, make_node, db):
    gone = await make_node("gone")
    task_id = queue(master)
    await gone.recv_kind("assign")
    await gone.event_acked(task_id, S.TASK_STATE_RUNNING, 1, attempt=1)
    gone.call.cancel()  # the node vanishes with the task running
    row = await wait_for(lambda: (r := taskdb.get_task(db, task_id))["attempt"] == 2 and r, timeout=10,
                         what="the task lost and queued again")
    assert f"node {gone.node_id} absent for" in row["reason"]
    lost = [e for e in taskdb.events(db, task_id) if e["state"] == "lost"]
    assert [(e["attempt"], e["node_id"]) for e in lost] == [(1, gone.node_id)]

    spare = await make_node("spare")
    spec = await spare.recv_kind("assign")
    assert (spec.task_id, spec.attempt) == (task_id, 2)

    # The old node comes back still running attempt 1: it is cancelled, its events,
    # logs and result are acknowledged and dropped.
    await gone.connect(held=(pb.HeldTask(task_id=task_id, state=S.TASK_STATE_RUNNING, attempt=1),))
    cancel = await gone.recv_kind("cancel")
    assert cancel.task_id == task_id and "runs again elsewhere" in cancel.reason
    ack = await gone.event_acked(task_id, S.TASK_STATE_CANCELLED, 2, attempt=1, exit_code=143)
    assert (ack.attempt, ack.seq) == (1, 2)
    await gone.logs(task_id, [(1, pb.LOG_STREAM_STDOUT, "old attempt"), (2, pb.LOG_STREAM_STDOUT, "more")])
    assert (await gone.recv_kind("log_ack")).seq == 2
    held = await gone.stub.ResultOffset(pb.ResultOffsetRequest(task_id=task_id, attempt=1), metadata=gone.meta)
    assert held.complete
    assert (await gone.recv_kind("result_ack")).attempt == 1
    data = os.urandom(200_000)
    reply = await gone.upload(task_id, data, hashlib.sha256(data).hexdigest(), attempt=1)
    assert reply.complete and reply.offset == len(data)
    assert (await gone.recv_kind("result_ack")).attempt == 1
    await master.full_pass()
    row = taskdb.get_task(db, task_id)
    assert (row["attempt"], row["node_id"], row["state"], row["outcome"]) == (2, spare.node_id, "assigned", None)
    assert not master.state.result(task_id).exists() and not master.state.result_part(task_id).exists()
    assert taskdb.logs_after(db, task_id, 0) == []
    # The current attempt goes on as usual on the spare node.
    await spare.event_acked(task_id, S.TASK_STATE_EXITED, 1, attempt=2, exit_code=0)
    await settle_on_node(spare, task_id, 2, 2, data=b"attempt 2")
    assert master.state.result(task_id).read_bytes() == b"attempt 2"


@pytest.mark.parametrize("master", [{"retry": RetryPolicy(node_lost_after_s=1.0)}], indirect=True)
async def test_a_task_that_had_exited_keeps_its_exit_code_when_its_node_vanishes(master, make_node, db, tmp_path):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    await node.event_acked(task_id, S.TASK_STATE_EXITED, 1, attempt=1, exit_code=3)
    node.call.cancel()  # gone before its result arrived: the task is not run again
    outcome = await asyncio.wait_for(asyncio.to_thread(
        submit_core.wait, master.state, task_id, tmp_path / "out", poll_s=0.05, result_grace_s=60), 15)
    assert (outcome.outcome, outcome.exit_code, outcome.result_path) == ("exited", 3, None)
    row = taskdb.get_task(db, task_id)
    assert row["attempt"] == 1 and "absent for" in row["reason"]


async def test_a_lost_task_cancelled_before_its_retry_is_not_run_again(master, make_node, db, tmp_path):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    await node.event_acked(task_id, S.TASK_STATE_LOST, 1, attempt=1, reason="docker engine restarted")
    assert taskdb.get_task(db, task_id)["retry_pending"] == 1
    assert taskdb.request_cancel(db, task_id) == "requested"  # what `dev-master cancel` does
    await settle_on_node(node, task_id, 1, 2)
    await master.full_pass()
    row = taskdb.get_task(db, task_id)
    assert (row["attempt"], row["state"], row["outcome"], row["retry_pending"]) == (1, "done", "lost", 0)
    outcome = await asyncio.to_thread(submit_core.wait, master.state, task_id, tmp_path / "out", poll_s=0.05)
    assert outcome.exit_code == 7 and "not run again: cancelled" in outcome.message
