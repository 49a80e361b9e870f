"""Task flow against a real dev-master: assignment, bundle download, result upload
(resume, sha256 check, idempotence), logs, reconciliation, drain, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc
import pytest

from hivemind_worker.devmaster import submit as submit_core
from hivemind_worker.devmaster import taskdb
from hivemind_worker.proto import worker_pb2 as pb
from tests.integration.devmaster.peer import wait_for

MiB = 1024 * 1024


def queue(master, bundle: bytes = b"", **spec) -> str:
    request = submit_core.SubmitRequest(bundle=bundle, spec={"cpu_millicores": 1000, "memory_bytes": 256 * MiB, **spec})
    return submit_core.submit(master.state, request)


async def test_assignment_and_bundle_in_chunks(master, make_node):
    node = await make_node()
    bundle = os.urandom(2 * MiB + 12345)  # not a zip: the master does not look inside
    task_id = queue(master, bundle, image="img:1", command=["python", "x.py"], env={"A": "1"}, timeout_s=60)
    spec = await node.recv_kind("assign")
    assert spec.task_id == task_id and spec.image == "img:1" and list(spec.command) == ["python", "x.py"]
    assert spec.env["A"] == "1" and spec.resources.cpu_millicores == 1000 and spec.timeout_s == 60
    assert spec.bundle.size_bytes == len(bundle) and spec.bundle.sha256 == hashlib.sha256(bundle).hexdigest()

    chunks = [c async for c in node.stub.FetchBundle(pb.FetchBundleRequest(task_id=task_id), metadata=node.meta)]
    assert len(chunks) == 3 and all(len(c.data) <= MiB for c in chunks)
    assert b"".join(c.data for c in chunks) == bundle
    assert chunks[0].total_bytes == len(bundle) and chunks[-1].sha256 == spec.bundle.sha256
    tail = [c async for c in node.stub.FetchBundle(
        pb.FetchBundleRequest(task_id=task_id, offset=2 * MiB), metadata=node.meta)]
    assert tail[0].offset == 2 * MiB and b"".join(c.data for c in tail) == bundle[2 * MiB:]


async def test_another_nodes_task_is_not_served(master, make_node):
    a = await make_node("a")
    task_id = queue(master, b"zip")
    await a.recv_kind("assign")
    b = await make_node("b", connect=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.stub.ResultOffset(pb.ResultOffsetRequest(task_id=task_id), metadata=b.meta)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_first_fit_respects_capacity_and_priority(master, make_node, db):
    node = await make_node(cpus=2000)
    low = queue(master, cpu_millicores=2000)
    await node.recv_kind("assign")
    high = queue(master, cpu_millicores=2000, priority=0)
    big = queue(master, cpu_millicores=4000)
    await master.full_pass()
    assert taskdb.get_task(db, high)["state"] == "queued"  # no room until `low` ends
    await node.event(low, pb.TASK_STATE_EXITED, exit_code=0)
    spec = await node.recv_kind("assign")
    assert spec.task_id == high
    assert taskdb.get_task(db, big)["state"] == "queued"  # never fits this node


async def test_task_slots_and_default_requests_are_respected(master, make_node, db):
    node = await make_node(cpus=8000, memory=8 << 30, task_slots=2)
    first, second, third = (queue(master, cpu_millicores=1000) for _ in range(3))
    assigned = {(await node.recv_kind("assign")).task_id for _ in range(2)}
    await master.full_pass()
    assert assigned == {first, second}
    assert taskdb.get_task(db, third)["state"] == "queued", "two slots: the third waits"
    await node.event(first, pb.TASK_STATE_EXITED, exit_code=0)
    assert (await node.recv_kind("assign")).task_id == third

    small = await make_node("small", cpus=1500, memory=8 << 30)
    unset = queue(master, cpu_millicores=0, memory_bytes=0)  # the node gives it 1 CPU / 512 MiB
    assert (await small.recv_kind("assign")).task_id == unset
    another = queue(master, cpu_millicores=0, memory_bytes=0)
    await master.full_pass()
    assert taskdb.get_task(db, another)["state"] == "queued", "1.5 CPUs hold one default task, not two"


async def test_upload_resumes_checks_and_acks(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()

    reply = await node.upload(task_id, data, digest, end=100_000)
    assert (reply.offset, reply.complete) == (100_000, False)
    held = await node.stub.ResultOffset(pb.ResultOffsetRequest(task_id=task_id), metadata=node.meta)
    assert (held.offset, held.complete) == (100_000, False)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.upload(task_id, data, digest, offset=50_000)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "resume from offset 100000" in err.value.details()

    reply = await node.upload(task_id, data, digest, offset=100_000)
    assert (reply.offset, reply.complete) == (300_000, True)
    ack = await node.recv_kind("result_ack")
    assert ack.task_id == task_id
    final = master.state.result(task_id)
    assert final.read_bytes() == data and not master.state.result_part(task_id).exists()
    assert taskdb.get_task(db, task_id)["result_complete"] == 1

    mtime = final.stat().st_mtime_ns
    again = await node.upload(task_id, data, digest)
    assert again.complete and final.stat().st_mtime_ns == mtime  # idempotent, not rewritten


async def test_upload_with_wrong_sha256_is_discarded(master, make_node):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    data = os.urandom(10_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.upload(task_id, data, "0" * 64)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "upload again from offset 0" in err.value.details()
    assert not master.state.result_part(task_id).exists() and not master.state.result(task_id).exists()
    reply = await node.upload(task_id, data, hashlib.sha256(data).hexdigest())
    assert reply.complete


async def test_logs_are_stored_once_and_acknowledged(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    lines = [(1, pb.LOG_STREAM_STDOUT, "one"), (2, pb.LOG_STREAM_STDERR, "two")]
    await node.logs(task_id, lines)
    assert (await node.recv_kind("log_ack")).seq == 2
    await node.logs(task_id, lines + [(3, pb.LOG_STREAM_STDOUT, "three")])  # a resend after reconnect
    assert (await node.recv_kind("log_ack")).seq == 3
    await node.logs(task_id, [(5, pb.LOG_STREAM_STDOUT, "five")])  # a gap: ack stays at 3
    assert (await node.recv_kind("log_ack")).seq == 3
    rows = taskdb.logs_after(db, task_id, 0)
    assert [(r["seq"], r["stream"], r["text"]) for r in rows] == [
        (1, "stdout", "one"), (2, "stderr", "two"), (3, "stdout", "three"), (5, "stdout", "five")]


async def test_log_chunks_are_welcomed_stored_once_and_checked(master, make_node, db):
    node = await make_node()
    assert node.welcome.log_chunks and node.welcome.max_message_bytes == master.config.max_message_bytes
    task_id = queue(master)
    await node.recv_kind("assign")
    out, err = pb.LOG_STREAM_STDOUT, pb.LOG_STREAM_STDERR
    await node.chunks(task_id, [(1, out, b"one\ntwo\n"), (3, err, b"\xffthree\n")])
    assert (await node.recv_kind("log_ack")).seq == 3
    # A resend from before the ack, then a malformed chunk (acknowledged, dropped, the
    # log says so) and the session goes on.
    await node.chunks(task_id, [(2, out, b"two\nthree?\nfour\n"), (5, err, b"five")])
    assert (await node.recv_kind("log_ack")).seq == 5
    await node.chunks(task_id, [(6, out, b"six\n")])
    assert (await node.recv_kind("log_ack")).seq == 6
    rows = taskdb.logs_after(db, task_id, 0)
    assert [(r["seq"], r["stream"], r["text"]) for r in rows] == [
        (1, "stdout", "one"), (2, "stdout", "two"), (3, "stderr", "\ufffdthree"), (4, "stdout", "four"),
        (5, "system", "[dev-master] 1 line(s) dropped: the node sent them malformed (an unfinished last line)"),
        (6, "stdout", "six")]


async def test_hello_reconciliation(master, make_node, db):
    node = await make_node()
    unacked = queue(master)
    await node.recv_kind("assign")
    running = queue(master)
    await node.recv_kind("assign")
    await node.event(running, pb.TASK_STATE_RUNNING)
    finished = queue(master)
    await node.recv_kind("assign")
    await node.event(finished, pb.TASK_STATE_EXITED, exit_code=0)
    data = b"result"
    await node.upload(finished, data, hashlib.sha256(data).hexdigest())
    await wait_for(lambda: taskdb.get_task(db, running)["state"] == "running", what="the running event stored")
    node.call.cancel()

    # The node comes back holding only `finished` (result pending: the ack was lost).
    await node.connect(cpus=0, held=(pb.HeldTask(task_id=finished, state=pb.TASK_STATE_UPLOADING, result_pending=True),
                                     pb.HeldTask(task_id="task-stranger", state=pb.TASK_STATE_RUNNING)))
    seen = {}
    for _ in range(2):
        message = await node.recv()
        seen[message.WhichOneof("kind")] = message
    assert seen["result_ack"].result_ack.task_id == finished
    assert seen["cancel"].cancel.task_id == "task-stranger"

    # Settled here (done) but the node still waits for the ack: it gets it again.
    await node.event(finished, pb.TASK_STATE_DONE)
    await wait_for(lambda: taskdb.get_task(db, finished)["state"] == "done", what="the done event stored")
    node.call.cancel()
    await node.connect(cpus=0, held=(pb.HeldTask(task_id=finished, state=pb.TASK_STATE_UPLOADING, result_pending=True),))
    assert (await node.recv_kind("result_ack")).task_id == finished
    assert taskdb.get_task(db, unacked)["state"] == "queued"  # never reached the node: queued again
    # Lost (an infrastructure failure, not the task's): queued again as its next attempt.
    again = taskdb.get_task(db, running)
    assert (again["state"], again["attempt"], again["outcome"]) == ("queued", 2, None)
    assert "came back without" in again["reason"]
    lost = [e for e in taskdb.events(db, running) if e["state"] == "lost"]
    assert [(e["attempt"], e["node_id"]) for e in lost] == [(1, node.node_id)]


async def test_draining_node_gets_no_tasks(master, make_node, db):
    from hivemind_worker.devmaster import registry

    node = await make_node()
    await node.send(drain=pb.Drain(draining=True, reason="maintenance"))
    await wait_for(lambda: registry.list_nodes(db)[0]["drain_reason"] == "maintenance", what="the drain notice")
    task_id = queue(master)
    await master.full_pass()
    assert taskdb.get_task(db, task_id)["state"] == "queued"
    await node.send(drain=pb.Drain(draining=False))
    assert (await node.recv_kind("assign")).task_id == task_id


async def test_cancel_reaches_the_node(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    assert taskdb.request_cancel(db, task_id) == "requested"  # what `dev-master cancel` does
    cancel = await node.recv_kind("cancel")
    assert cancel.task_id == task_id
    queued_id = queue(master, cpu_millicores=64000)
    assert taskdb.request_cancel(db, queued_id) == "cancelled"
    assert taskdb.get_task(db, queued_id)["outcome"] == "cancelled"


async def test_operator_drain_and_resume_reach_the_node(master, make_node, db):
    from hivemind_worker.devmaster import registry

    node = await make_node()
    assert registry.request_drain(db, node.node_id, True)  # what `dev-master nodes drain` does
    drain = await node.recv_kind("drain")
    assert drain.draining and "operator" in drain.reason
    task_id = queue(master)
    await master.full_pass()
    assert taskdb.get_task(db, task_id)["state"] == "queued"
    assert registry.request_drain(db, node.node_id, False)
    assert not (await node.recv_kind("drain")).draining
    assert (await node.recv_kind("assign")).task_id == task_id
