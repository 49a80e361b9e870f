"""Connect streams (one live session per node) and the first-fit task assignment.

A session starts with the node's hello, answered by Welcome; a second Connect for
the same node replaces the first (the old stream ends with ABORTED). The reader
stores what the node sends (telemetry, task events, logs - acknowledged with
LogAck once stored - and drain notices); the writer sends what ``dispatch()`` and
the result upload queue for the node.

Hello reconciliation, for each task the master has on the node that is not
settled (not done/lost/rejected):
- the node does not hold it: still ``assigned`` (never acknowledged) -> queued
  again; its result already complete -> ``done``; otherwise -> ``lost`` with a reason;
- the node holds it: result complete here but pending there -> ResultAck again;
  cancellation requested -> CancelTask again; stored logs -> LogAck up to them.
Tasks the node holds that the master does not know (or gave to another node) are
cancelled while they run, and their pending results acknowledged (nobody here will
ask for them); a held task settled here already gets its missing ResultAck.

Assignment is first fit in priority order against the capacity from hello minus
the tasks still running on the node; draining nodes get nothing. Not a scheduler.
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

from hivemind_worker.devmaster import registry, taskdb
from hivemind_worker.proto import worker_pb2 as pb

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 30.0
REVOKED_MESSAGE = "node credential refused (revoked or unknown); re-enroll this node"


def state_name(value: int) -> str:
    return pb.TaskState.Name(value).removeprefix("TASK_STATE_").lower()


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
    )


class _End:
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


NODE_DEFAULT_MILLICORES = 1000  # what tasks.admission gives a task that asks for nothing
NODE_DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_NODE_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default, for nodes that do not say
MESSAGE_OVERHEAD_BYTES = 64  # oneof tag and length prefixes around the spec


class Session:
    def __init__(self, node_id: str, hello: pb.Hello) -> None:
        self.node_id = node_id
        self.session_id = "sess-" + secrets.token_hex(6)
        self.capacity = (hello.capacity.cpu_millicores, hello.capacity.memory_bytes, hello.capacity.gpu_count)
        self.draining = hello.draining
        # What the node's gRPC channel accepts; a larger message would break its stream.
        self.max_message_bytes = hello.max_message_bytes or DEFAULT_NODE_MAX_MESSAGE_BYTES
        self.task_slots = hello.task_slots  # 0: the node did not say; capacity alone limits
        self.ending = False
        self.outbox: asyncio.Queue = asyncio.Queue()

    def send(self, message: pb.MasterMessage) -> None:
        if not self.ending:
            self.outbox.put_nowait(message)

    def end(self, code: grpc.StatusCode, message: str) -> None:
        if not self.ending:
            self.ending = True
            self.outbox.put_nowait(_End(code, message))


class SessionHub:
    """All live sessions of one `serve`, and the assignment of queued tasks."""

    def __init__(self, conn: sqlite3.Connection, wake: asyncio.Event) -> None:
        self.conn = conn
        self.wake = wake
        self.sessions: dict[str, Session] = {}

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
        session = Session(node_id, hello)
        self.sessions[node_id] = session
        registry.mark_session(self.conn, node_id, session.session_id, connected=True)
        capacity = json_format.MessageToDict(hello.capacity, preserving_proto_field_name=True)
        registry.record_hello(self.conn, node_id, hello.agent_version, capacity, hello.draining)
        logger.info("node connected (session %s)", session.session_id, extra={"node_id": node_id})
        end_reason = "stream closed by the node"
        reader = None
        try:
            await context.write(pb.MasterMessage(welcome=pb.Welcome(
                session_id=session.session_id, report_interval_s=0, server_time_ms=int(time.time() * 1000))))
            self._reconcile(session, hello)
            self.wake.set()
            reader = asyncio.ensure_future(self._read(session, requests))
            while True:
                getter = asyncio.ensure_future(session.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    reader.result()  # re-raises a reader failure
                    break
                item = getter.result()
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
                registry.set_draining(self.conn, session.node_id, session.draining)
                logger.info("node %s draining: %s", "is" if session.draining else "is no longer",
                            message.drain.reason or "-", extra={"node_id": session.node_id})
                self.wake.set()
            elif kind == "hello":
                session.draining = message.hello.draining

    def _on_event(self, session: Session, event: pb.TaskEvent) -> None:
        state = state_name(event.state)
        ok = taskdb.record_event(self.conn, session.node_id, event.task_id, state, event.reason,
                                 event.exit_code, event.detail, event.time_ms)
        if not ok:
            logger.warning("event %s for a task not assigned to this node", state,
                           extra={"node_id": session.node_id, "task_id": event.task_id})
            return
        logger.info("task %s%s", state, f": {event.reason}" if event.reason else "",
                    extra={"node_id": session.node_id, "task_id": event.task_id})
        if state in taskdb.OUTCOMES:
            self.wake.set()  # capacity freed

    def _on_logs(self, session: Session, batch: pb.LogBatch) -> None:
        row = taskdb.get_task(self.conn, batch.task_id)
        if row is None or row["node_id"] != session.node_id:
            logger.warning("logs for a task not assigned to this node",
                           extra={"node_id": session.node_id, "task_id": batch.task_id})
            return
        lines = [(line.seq, pb.LogStream.Name(line.stream).removeprefix("LOG_STREAM_").lower(), line.text,
                  line.time_ms) for line in batch.lines]
        seq = taskdb.store_logs(self.conn, batch.task_id, lines)
        if seq:
            session.send(pb.MasterMessage(log_ack=pb.LogAck(task_id=batch.task_id, seq=seq)))

    def _reconcile(self, session: Session, hello: pb.Hello) -> None:
        held = {t.task_id: t for t in hello.tasks}
        node_id = session.node_id
        for row in taskdb.unsettled_on(self.conn, node_id):
            task_id = row["task_id"]
            h = held.pop(task_id, None)
            if h is None:
                if row["state"] == "assigned":
                    taskdb.requeue(self.conn, task_id)
                elif row["result_complete"]:
                    taskdb.record_event(self.conn, node_id, task_id, "done", "result stored before the node restarted")
                else:
                    taskdb.settle(self.conn, task_id, "lost", f"node {node_id} came back without this task")
                    logger.warning("task lost by its node", extra={"node_id": node_id, "task_id": task_id})
                continue
            if h.result_pending and row["result_complete"]:
                session.send(pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id)))
            if row["cancel_requested"] and row["outcome"] is None:
                session.send(pb.MasterMessage(cancel=pb.CancelTask(task_id=task_id, reason="cancelled by the operator")))
                taskdb.mark_cancel_sent(self.conn, task_id)
            seq = taskdb.contiguous_seq(self.conn, task_id)
            if seq:
                session.send(pb.MasterMessage(log_ack=pb.LogAck(task_id=task_id, seq=seq)))
        for task_id, h in held.items():
            row = taskdb.get_task(self.conn, task_id)
            ours = row is not None and row["node_id"] == node_id
            if ours:  # settled here already (done/lost/rejected): only a result ack may be missing
                if h.result_pending and row["result_complete"]:
                    session.send(pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id)))
                continue
            if state_name(h.state) not in taskdb.OUTCOMES | {"uploading", "done"}:
                session.send(pb.MasterMessage(cancel=pb.CancelTask(
                    task_id=task_id, reason="this master does not know the task (or gave it to another node)")))
            elif h.result_pending:
                # Nobody here will ever ask for it: let the node free its spool.
                logger.warning("acknowledging the result of a task this master does not know",
                               extra={"node_id": node_id, "task_id": task_id})
                session.send(pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id)))

    # ------------------------------------------------------------ master -> nodes

    def _free(self, session: Session) -> tuple[int, int, int]:
        cpu, mem, gpus = session.capacity
        for row in taskdb.active_on(self.conn, session.node_id):
            c, m, g = _resources(json.loads(row["spec_json"]))
            cpu, mem, gpus = cpu - c, mem - m, gpus - g
        return cpu, mem, gpus

    def _slots_full(self, session: Session) -> bool:
        return bool(session.task_slots) and len(taskdb.active_on(self.conn, session.node_id)) >= session.task_slots

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
            session = self.sessions.get(row["node_id"])
            if session is not None and not session.ending:
                session.send(pb.MasterMessage(cancel=pb.CancelTask(task_id=row["task_id"], reason="cancelled by the operator")))
                taskdb.mark_cancel_sent(self.conn, row["task_id"])
        candidates = [s for s in self.sessions.values() if not s.draining and not s.ending]
        if not candidates:
            return
        for row in taskdb.queued(self.conn):
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
                if size > session.max_message_bytes or self._slots_full(session):
                    continue
                free = self._free(session)
                if all(n <= f for n, f in zip(need, free)) and taskdb.assign(self.conn, row["task_id"], session.node_id):
                    session.send(message)
                    logger.info("task assigned", extra={"node_id": session.node_id, "task_id": row["task_id"]})
                    break

    def result_stored(self, node_id: str, task_id: str) -> None:
        session = self.sessions.get(node_id)
        if session is not None:
            session.send(pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id)))

    def end_all(self, message: str = "dev-master is shutting down") -> None:
        for session in list(self.sessions.values()):
            session.end(grpc.StatusCode.UNAVAILABLE, message)
