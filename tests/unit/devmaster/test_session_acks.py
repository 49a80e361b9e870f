"""A session's outbox holds event acks and sends the highest per task and attempt
(acks are cumulative); a held ack never goes after a later assign or cancel of its
task. The real Session on a real event loop; the outbox is read as the writer reads it."""

from __future__ import annotations

import asyncio

import grpc

from hivemind_worker.devmaster import sessions
from hivemind_worker.devmaster.sessions import Session
from hivemind_worker.proto import worker_pb2 as pb


def ack(task_id: str, seq: int, attempt: int = 1) -> pb.MasterMessage:
    return pb.MasterMessage(event_ack=pb.EventAck(task_id=task_id, attempt=attempt, seq=seq))


def describe(item) -> tuple:
    if not isinstance(item, pb.MasterMessage):
        return ("end", item.message, 0)
    kind = item.WhichOneof("kind")
    body = getattr(item, kind)
    return (kind, body.task_id, body.seq if kind == "event_ack" else body.attempt if kind == "assign" else 0)


def queued(session: Session) -> list[tuple]:
    """What the writer would send now, in order, as (kind, task id, seq or attempt)."""
    out = []
    while not session.outbox.empty():
        out.append(describe(session.outbox.get_nowait()))
    return out


async def test_superseded_acks_are_merged_and_sent_after_the_hold():
    session = Session("node-1", pb.Hello())
    for message in (ack("t1", 1), ack("t2", 1), ack("t1", 3), ack("t1", 2), ack("t1", 1, attempt=2)):
        session.send(message)
    assert queued(session) == []  # held
    # The hold ends on its own timer: the highest seq per task and attempt (a 2 after
    # the 3 does not lower it), in the order first held.
    first = await asyncio.wait_for(session.outbox.get(), sessions.ACK_HOLD_S + 5)
    assert [describe(first)] + queued(session) == [("event_ack", "t1", 3), ("event_ack", "t2", 1),
                                                   ("event_ack", "t1", 1)]
    assert session._acks == {} and session._ack_timer is None


async def test_held_ack_goes_before_a_later_assign_or_cancel_of_its_task():
    session = Session("node-1", pb.Hello())
    session.send(ack("t1", 2))
    session.send(ack("t2", 1))
    session.send(pb.MasterMessage(result_ack=pb.ResultAck(task_id="t1", attempt=1)))  # independent: not a release
    session.send(pb.MasterMessage(assign=pb.TaskSpec(task_id="t1", attempt=1)))
    session.send(ack("t2", 4))
    session.send(pb.MasterMessage(cancel=pb.CancelTask(task_id="t2", reason="operator")))
    assert queued(session) == [("result_ack", "t1", 0), ("event_ack", "t1", 2), ("assign", "t1", 1),
                               ("event_ack", "t2", 4), ("cancel", "t2", 0)]
    assert session._acks == {}


async def test_end_sends_the_held_acks_first_and_nothing_after():
    session = Session("node-1", pb.Hello())
    session.send(ack("t1", 5))
    session.end(grpc.StatusCode.ABORTED, "replaced")
    session.send(ack("t1", 6))
    assert queued(session) == [("event_ack", "t1", 5), ("end", "replaced", 0)]
    assert session._ack_timer is None
