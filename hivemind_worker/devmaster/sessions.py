"""Connect streams (one live session per node) and the first-fit task assignment.

A session starts with the node's hello, answered by Welcome; a second Connect for
the same node replaces the first (the old stream ends with ABORTED). The reader
stores what the node sends (telemetry, task events, logs - acknowledged with
LogAck once stored - and drain notices); the writer sends what ``dispatch()`` and
the result upload queue for the node. Event acks are cumulative (an ack of seq n
covers every seq up to n of that task's attempt), so a session holds them for
``ACK_HOLD_S`` and sends only the highest per task and attempt: a write costs more
CPU than the rest of an event's handling, and a task's events come in bursts
(accepted/running, exited/uploading/done). A held ack still goes out before any
later assign or cancel of its task, whose attempt's seqs may start again at 1.

Hello reconciliation and the rules for events, deferrals, lost tasks and attempts
live in ``attempts``; this module routes messages to them. Log lines - chunks (the
Welcome asks for them) or an old node's LogLines - are stored by ``logstore`` within the
per-task limits and acknowledged once stored or dropped.

Assignment is first fit in priority order against the capacity from hello minus
the tasks still running on the node; draining nodes get nothing, a node does not get
back a task it deferred before the backoff is over, nor one whose old attempt it
still holds. Not a scheduler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time

import grpc
from google.protobuf import json_format

from hivemind_worker.devmaster import logstore, registry, taskdb
from hivemind_worker.devmaster.attempts import Attempts, RetryPolicy, state_name
from hivemind_worker.devmaster.layout import StateDir
from hivemind_worker.proto import worker_pb2 as pb

# LogStream value -> the logs table's name for it, once (not per line).
_STREAM_NAMES = {v.number: v.name.removeprefix("LOG_STREAM_").lower() for v in pb.LogStream.DESCRIPTOR.values}

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 30.0
# How long an event ack waits for later ones of the same task to merge with: a
# task's start (accepted, running) and its end (exited, uploading, done) each fit,
# and a sub-second task's events all do (spy_c4: ~1 ack per task, was 5; with 0.5 s,
# 2). Only the node's journal feels it: after a cut it resends a little more, and
# each resent event is acknowledged again.
ACK_HOLD_S = 1.0
REVOKED_MESSAGE = "node credential refused (revoked or unknown); re-enroll this node"


def _requested(spec: dict) -> tuple[int, int, int]:
    return int(spec.get("cpu_millicores", 0)), int(spec.get("memory_bytes", 0)), int(spec.get("gpu_count", 0))


def _resources(spec: dict) -> tuple[int, int, int]:
    """What a task takes on its node: a worker gives an unset CPU or memory request
    its defaults (tasks are never unlimited), so count those here too."""
    cpu, mem, gpus = _requested(spec)
    return cpu or NODE_DEFAULT_MILLICORES, mem or NODE_DEFAULT_MEMORY_BYTES, gpus


def task_spec(row: sqlite3.Row) -> pb.TaskSpec:
    spec = json.loads(row["spec_json"])
    cpu, mem, gpus = _requested(spec)
    return pb.TaskSpec(
        task_id=row["task_id"],
        image=spec.get("image", ""),
        command=spec.get("command", []),
        entrypoint=spec.get("entrypoint", ""),
        env=spec.get("env", {}),
        resources=pb.Resources(cpu_millicores=cpu, memory_bytes=mem, gpu_count=gpus),
        priority=row["priority"],
        timeout_s=int(spec.get("timeout_s", 0)),
        network=pb.NETWORK_POLICY_BRIDGE if spec.get("network") == "bridge" else pb.NETWORK_POLICY_NONE,
        bundle=pb.BundleRef(size_bytes=row["bundle_size"], sha256=row["bundle_sha256"]),
        attempt=row["attempt"],
        no_retry=bool(spec.get("no_retry")),
    )


class _End:
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


_READER_DONE = object()  # queued when the node's side of the stream ended


NODE_DEFAULT_MILLICORES = 1000  # what tasks.admission gives a task that asks for nothing
NODE_DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_NODE_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default, for nodes that do not say
MESSAGE_OVERHEAD_BYTES = 64  # oneof tag and length prefixes around the spec
QUEUE_PAGE_MARGIN = 16  # queued rows read in a pass beyond the free slots (skipped ones)


class Session:
    def __init__(self, node_id: str, hello: pb.Hello, ack_hold_s: float = ACK_HOLD_S) -> None:
        self.node_id = node_id
        self.session_id = "sess-" + secrets.token_hex(6)
        self.capacity = (hello.capacity.cpu_millicores, hello.capacity.memory_bytes, hello.capacity.gpu_count)
        self.draining = hello.draining
        # What the node's gRPC channel accepts; a larger message would break its stream.
        self.max_message_bytes = hello.max_message_bytes or DEFAULT_NODE_MAX_MESSAGE_BYTES
        self.task_slots = hello.task_slots  # 0: the node did not say; capacity alone limits
        # task id -> an old attempt the node still holds (from its hello) until that
        # copy is settled there: the task's current attempt goes to other nodes.
        self.stale: dict[str, int] = {}
        self.ending = False
        self.outbox: asyncio.Queue = asyncio.Queue()
        # Held event acks: (task id, attempt) -> the highest seq, in the order first held.
        self._acks: dict[tuple[str, int], int] = {}
        self._ack_hold_s = ack_hold_s
        self._ack_timer: asyncio.TimerHandle | None = None

    def send(self, message: pb.MasterMessage) -> None:
        if self.ending:
            return
        kind = message.WhichOneof("kind")
        if kind == "event_ack":
            ack = message.event_ack
            key = (ack.task_id, ack.attempt)
            self._acks[key] = max(ack.seq, self._acks.get(key, 0))
            if self._ack_timer is None:
                self._ack_timer = asyncio.get_running_loop().call_later(self._ack_hold_s, self.release_acks)
            return
        if kind in ("assign", "cancel"):
            self.release_acks(getattr(message, kind).task_id)
        self.outbox.put_nowait(message)

    def release_acks(self, task_id: str | None = None) -> None:
        """Queue the held event acks (of one task, or all), in the order they were held."""
        if task_id is None:
            keys = list(self._acks)
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
        else:
            keys = [key for key in self._acks if key[0] == task_id]
        for key in keys:
            seq = self._acks.pop(key)
            if not self.ending:
                self.outbox.put_nowait(pb.MasterMessage(event_ack=pb.EventAck(task_id=key[0], attempt=key[1], seq=seq)))

    def end(self, code: grpc.StatusCode, message: str) -> None:
        if not self.ending:
            self.release_acks()  # the node may still read them before the status
            self.ending = True
            self.outbox.put_nowait(_End(code, message))


class SessionHub:
    """All live sessions of one `serve`, and the assignment of queued tasks."""

    def __init__(self, conn: sqlite3.Connection, wake: asyncio.Event, state: StateDir,
                 policy: RetryPolicy = RetryPolicy(), log_limits: taskdb.LogLimits = taskdb.LogLimits(),
                 max_message_bytes: int = 0, ack_hold_s: float = ACK_HOLD_S) -> None:
        self.conn = conn
        self.ack_hold_s = ack_hold_s
        self.max_message_bytes = max_message_bytes  # what this master receives (0: not said), told in the Welcome
        self.wake = wake
        self.sessions: dict[str, Session] = {}
        self.log_limits = log_limits
        self.attempts = Attempts(conn, state, policy, wake, self.send)

    def send(self, node_id: str, message: pb.MasterMessage) -> None:
        session = self.sessions.get(node_id)
        if session is not None:
            session.send(message)

    # ------------------------------------------------------------ the stream

    async def connect(self, node_id: str, request_iterator, context: grpc.aio.ServicerContext) -> None:
        requests = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(requests.__anext__(), HELLO_TIMEOUT_S)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within 30 s; send hello first on Connect")
        if first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on Connect must be hello")
        hello = first.hello
        if hello.node_id and hello.node_id != node_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"hello names node {hello.node_id} but the credential belongs to {node_id}",
            )
        old = self.sessions.get(node_id)
        if old is not None:
            old.end(grpc.StatusCode.ABORTED, "replaced by a newer session of the same node")
        session = Session(node_id, hello, self.ack_hold_s)
        self.sessions[node_id] = session
        registry.mark_session(self.conn, node_id, session.session_id, connected=True)
        capacity = json_format.MessageToDict(hello.capacity, preserving_proto_field_name=True)
        registry.record_hello(self.conn, node_id, hello.agent_version, capacity, hello.draining, hello.drain_reason,
                              usage_key=hello.usage_public_key)
        logger.info("node connected (session %s)", session.session_id, extra={"node_id": node_id})
        end_reason = "stream closed by the node"
        reader = None
        try:
            await context.write(pb.MasterMessage(welcome=pb.Welcome(
                session_id=session.session_id, report_interval_s=0, server_time_ms=int(time.time() * 1000),
                log_chunks=True, max_message_bytes=self.max_message_bytes)))
            self.attempts.reconcile(node_id, hello.tasks, session.stale)
            self.wake.set()
            reader = asyncio.ensure_future(self._read(session, requests))
            # The reader's end wakes the writer through the outbox: one await per
            # message, not a task and an asyncio.wait each.
            reader.add_done_callback(lambda _: session.outbox.put_nowait(_READER_DONE))
            while True:
                item = await session.outbox.get()
                if reader.done():
                    reader.result()  # re-raises a reader failure
                    break
                if isinstance(item, _End):
                    end_reason = item.message
                    await context.abort(item.code, item.message)
                await context.write(item)
        except asyncio.CancelledError:
            end_reason = "stream cancelled"
            raise
        finally:
            if reader is not None:
                reader.cancel()
            current = self.sessions.get(node_id) is session
            if current:
                del self.sessions[node_id]
            session.ending = True
            session.release_acks()  # drops them (ending): the timer must not outlive the session
            registry.mark_session(self.conn, node_id, session.session_id, connected=False, reason=end_reason,
                                  current=current)
            logger.info("node left (session %s): %s", session.session_id, end_reason, extra={"node_id": node_id})
            self.wake.set()

    async def _read(self, session: Session, requests) -> None:
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "telemetry":
                registry.record_telemetry(self.conn, session.node_id, json_format.MessageToJson(
                    message.telemetry, preserving_proto_field_name=True, indent=None))
            elif kind == "task_event":
                self._on_event(session, message.task_event)
            elif kind == "logs":
                self._on_logs(session, message.logs)
            elif kind == "drain":
                session.draining = message.drain.draining
                registry.set_draining(self.conn, session.node_id, session.draining, message.drain.reason)
                logger.info("node %s draining: %s", "is" if session.draining else "is no longer",
                            message.drain.reason or "-", extra={"node_id": session.node_id})
                self.wake.set()
            elif kind == "hello":
                session.draining = message.hello.draining
                registry.set_draining(self.conn, session.node_id, session.draining, message.hello.drain_reason)

    def _on_event(self, session: Session, event: pb.TaskEvent) -> None:
        what, ack = self.attempts.on_event(session.node_id, event)
        if what == "stale" and state_name(event.state) in ("done", "rejected", "deferred"):
            session.stale.pop(event.task_id, None)  # the old copy is gone from the node
            self.wake.set()
        if ack is not None:
            session.send(pb.MasterMessage(event_ack=ack))

    def _on_logs(self, session: Session, batch: pb.LogBatch) -> None:
        names = _STREAM_NAMES
        # Chunks (lines as the task wrote them) cost no Python step per line; an old
        # node's LogLines become chunks too. logstore checks both before storing.
        chunks = [(c.first_seq, names.get(c.stream, "unspecified"), c.time_ms, c.text) for c in batch.chunks]
        if batch.lines:
            chunks[:0] = logstore.line_chunks(
                (line.seq, names.get(line.stream, "unspecified"), line.text, line.time_ms) for line in batch.lines)
        row = taskdb.get_task(self.conn, batch.task_id)
        if row is None or row["node_id"] != session.node_id or batch.task_id in session.stale:
            # An old attempt's (or an unknown task's) lines: nobody here will read them;
            # acknowledged so that the node frees its spool.
            seq = logstore.last_seq(chunks)
            logger.info("dropping the log lines up to seq %d of a stale or unknown attempt", seq,
                        extra={"node_id": session.node_id, "task_id": batch.task_id})
            if seq:
                session.send(pb.MasterMessage(log_ack=pb.LogAck(task_id=batch.task_id, seq=seq)))
            return
        seq, note = logstore.store_chunks(self.conn, batch.task_id, chunks, self.log_limits)
        if note:
            logger.warning("log of the task limited: %s", note,
                           extra={"node_id": session.node_id, "task_id": batch.task_id})
        if seq:
            session.send(pb.MasterMessage(log_ack=pb.LogAck(task_id=batch.task_id, seq=seq)))

    # ------------------------------------------------------------ master -> nodes

    def _room(self, session: Session) -> list[int]:
        """What the node has left: [cpu, memory, gpus, task slots] (slots: a large
        number when the node did not say), after the tasks active on it."""
        cpu, mem, gpus = session.capacity
        active = taskdb.active_on(self.conn, session.node_id)
        for row in active:
            c, m, g = _resources(json.loads(row["spec_json"]))
            cpu, mem, gpus = cpu - c, mem - m, gpus - g
        return [cpu, mem, gpus, (session.task_slots or 1 << 30) - len(active)]

    def dispatch(self) -> None:
        """Assign queued tasks, pass on cancellations, end revoked nodes' streams."""
        revoked = registry.revoked_ids(self.conn)
        for node_id, session in list(self.sessions.items()):
            if node_id in revoked:
                session.end(grpc.StatusCode.UNAUTHENTICATED, REVOKED_MESSAGE)
        # `dev-master nodes drain/resume` writes the flag; pass a change on to the node.
        for node_id, draining in registry.drain_flags(self.conn, list(self.sessions)).items():
            session = self.sessions[node_id]
            if draining != session.draining and not session.ending:
                session.draining = draining
                session.send(pb.MasterMessage(drain=pb.Drain(
                    draining=draining, reason="drained by the operator" if draining else "resumed by the operator")))
        for row in taskdb.pending_cancels(self.conn):
            holder = self.sessions.get(row["node_id"])
            if holder is not None and not holder.ending:
                holder.send(pb.MasterMessage(cancel=pb.CancelTask(task_id=row["task_id"], reason="cancelled by the operator")))
                taskdb.mark_cancel_sent(self.conn, row["task_id"])
        candidates = [s for s in self.sessions.values() if not s.draining and not s.ending]
        if not candidates:
            return
        # Each node's room is read once per pass and kept as tasks go to it: a pass
        # costs a query per node, not per queued task and node.
        room = {s.node_id: self._room(s) for s in candidates}
        if not any(r[3] > 0 for r in room.values()):
            return  # every node's task slots are full: the queue is not even read
        # A pass mostly fills the free slots from the queue's head: it reads that much
        # first (a long queue costs no more per pass), and the rest only when skipped
        # rows (deferred, too large, stale) used the page up; a row read twice is
        # skipped twice, the room only shrinks.
        page = sum(max(r[3], 0) for r in room.values()) + QUEUE_PAGE_MARGIN
        rows = taskdb.queued(self.conn, page)
        now = time.time()
        if self._offer(rows, candidates, room, now) and len(rows) == page:
            self._offer(taskdb.queued(self.conn), candidates, room, now)

    def _offer(self, rows: list[sqlite3.Row], candidates: list[Session], room: dict[str, list[int]],
               now: float) -> bool:
        """First fit of ``rows`` in order; False once every node's task slots are full."""
        for row in rows:
            if not any(r[3] > 0 for r in room.values()):
                return False  # the rest wait for the next pass
            need = _resources(json.loads(row["spec_json"]))
            message = pb.MasterMessage(assign=task_spec(row))
            size = message.ByteSize() + MESSAGE_OVERHEAD_BYTES
            if all(size > s.max_message_bytes for s in candidates):
                largest = max(s.max_message_bytes for s in candidates)
                taskdb.settle(self.conn, row["task_id"], "rejected",
                              f"the task spec is {size} bytes, more than any connected node accepts ({largest}); "
                              "put large data in the bundle, not in --env or --command")
                continue
            for session in candidates:
                free = room[session.node_id]
                if size > session.max_message_bytes or free[3] <= 0 or row["task_id"] in session.stale:
                    continue
                if row["deferred_by"] == session.node_id and (row["deferred_until"] or 0) > now:
                    continue  # it said "not now" a moment ago; others may take it
                if all(n <= f for n, f in zip(need, free)) and taskdb.assign(self.conn, row["task_id"], session.node_id):
                    room[session.node_id] = [f - n for f, n in zip(free, (*need, 1))]
                    session.send(message)
                    logger.info("task assigned", extra={"node_id": session.node_id, "task_id": row["task_id"]})
                    break
        return any(r[3] > 0 for r in room.values())

    def result_stored(self, node_id: str, task_id: str, attempt: int) -> None:
        self.send(node_id, pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id, attempt=attempt)))

    def sweep(self) -> None:
        """Periodic: nodes absent too long, tasks deferred too long."""
        self.attempts.sweep(list(self.sessions))

    def end_all(self, message: str = "dev-master is shutting down") -> None:
        for session in list(self.sessions.values()):
            session.end(grpc.StatusCode.UNAVAILABLE, message)
