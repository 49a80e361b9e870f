"""Event acks, held and merged: a burst of a task's events costs one EventAck (the
highest seq: acks are cumulative), and a held ack still reaches the node before a
later assign of its task (whose seqs start at 1 again). A real dev-master over
loopback gRPC; a scripted node reads the stream in order."""

from __future__ import annotations

import pytest

from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.attempts import RetryPolicy
from hivemind_worker.devmaster.sessions import ACK_HOLD_S
from hivemind_worker.proto import worker_pb2 as pb
from tests.integration.devmaster.test_attempts import history, queue


@pytest.mark.parametrize("master", [{"event_ack_hold_s": ACK_HOLD_S}], indirect=True)
async def test_a_burst_of_events_is_acknowledged_once_with_the_highest_seq(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    # Sent back to back (a node's accepted/running): both stored before either is acked.
    await node.event(task_id, pb.TASK_STATE_ACCEPTED, seq=1, attempt=1)
    await node.event(task_id, pb.TASK_STATE_RUNNING, seq=2, attempt=1)
    ack = await node.recv_kind("event_ack")
    assert (ack.task_id, ack.attempt, ack.seq) == (task_id, 1, 2)  # no ack of seq 1 went before it
    assert history(db, task_id) == [(1, "assigned"), (1, "accepted"), (1, "running")]
    # The next event gets its own ack: the stream is not stuck behind the merge.
    assert (await node.event_acked(task_id, pb.TASK_STATE_EXITED, 3, attempt=1, exit_code=0)).seq == 3
    assert taskdb.get_task(db, task_id)["outcome"] == "exited"


@pytest.mark.parametrize("master", [{"retry": RetryPolicy(defer_backoff_s=0.01), "event_ack_hold_s": ACK_HOLD_S}],
                         indirect=True)
async def test_a_held_ack_goes_before_the_next_assign_of_its_task(master, make_node, db):
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    await node.event(task_id, pb.TASK_STATE_ACCEPTED, seq=1, attempt=1)
    await node.event(task_id, pb.TASK_STATE_DEFERRED, seq=2, attempt=1, reason="node full")
    # Offered again to the same node after 10 ms, well within the ack's hold: the ack
    # of seq 2 still comes first, so the node does not take it for the new seqs 1-2.
    first, second = await node.recv(), await node.recv()
    assert first.WhichOneof("kind") == "event_ack" and first.event_ack.seq == 2, first
    assert second.WhichOneof("kind") == "assign" and second.assign.task_id == task_id, second
    assert (await node.event_acked(task_id, pb.TASK_STATE_ACCEPTED, 1, attempt=1)).seq == 1
    assert history(db, task_id) == [(1, "assigned"), (1, "accepted"), (1, "deferred"), (1, "assigned"),
                                    (1, "accepted")]
