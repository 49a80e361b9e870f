"""The wire's vocabulary: protobuf messages built from and read into the package's
own types. The only place that knows the session's message shapes; the agent and
the task manager speak tasks.model values and the typed commands below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.tasks.model import (
    HeldTask,
    LogChunk,
    LogStream,
    NetworkPolicy,
    Resources,
    TaskEvent,
    TaskRequest,
    TaskStatus,
)

_STATE = {status: getattr(pb, f"TASK_STATE_{status.name}") for status in TaskStatus}
_STREAM = {
    LogStream.STDOUT: pb.LOG_STREAM_STDOUT,
    LogStream.STDERR: pb.LOG_STREAM_STDERR,
    LogStream.SYSTEM: pb.LOG_STREAM_SYSTEM,
}


# ---------------------------------------------------------------- worker -> master
@dataclass(frozen=True)
class NodeHello:
    """What the node says first on every session (the master reconciles with it)."""

    node_id: str
    agent_version: str
    capacity: Resources
    free: Resources
    tasks: list[HeldTask] = field(default_factory=list)
    draining: bool = False
    drain_reason: str = ""  # "operator", "shutdown", "master"; "" when not draining
    max_message_bytes: int = 0
    task_slots: int = 0
    usage_public_key: bytes = b""  # every hello: a node enrolled before usage records has no other way


def resources_to_pb(r: Resources) -> pb.Resources:
    return pb.Resources(cpu_millicores=r.cpu_millicores, memory_bytes=r.memory_bytes, gpu_count=r.gpu_count)


def held_to_pb(held: HeldTask) -> pb.HeldTask:
    return pb.HeldTask(
        task_id=held.task_id, state=_STATE[held.status], last_log_seq=held.last_log_seq,
        result_pending=held.result_pending, attempt=held.attempt,
    )


def hello_to_pb(h: NodeHello) -> pb.Hello:
    return pb.Hello(
        node_id=h.node_id, agent_version=h.agent_version, capacity=resources_to_pb(h.capacity),
        free=resources_to_pb(h.free), tasks=[held_to_pb(t) for t in h.tasks], draining=h.draining,
        drain_reason=h.drain_reason, max_message_bytes=h.max_message_bytes, task_slots=h.task_slots,
        usage_public_key=h.usage_public_key,
    )


def event_message(event: TaskEvent) -> pb.WorkerMessage:
    return pb.WorkerMessage(task_event=pb.TaskEvent(
        task_id=event.task_id, state=_STATE[event.status], reason=event.reason, exit_code=event.exit_code,
        time_ms=event.time_ms, detail=event.detail, seq=event.seq, attempt=event.attempt,
    ))


def drain_message(draining: bool, reason: str) -> pb.WorkerMessage:
    return pb.WorkerMessage(drain=pb.Drain(draining=draining, reason=reason))


_CUT = b" [hivemind: line truncated]\n"


def log_messages(task_id: str, chunks: list[LogChunk], max_bytes: int,
                 as_chunks: bool) -> list[tuple[pb.WorkerMessage, int, int]]:
    """Split chunks into messages that stay well under the session's size limit:
    (message, lines in it, text bytes in it). ``as_chunks``: the master takes
    LogChunks (its Welcome said so), a chunk split at a line where a message is full;
    otherwise a LogLine per line, decoded (UTF-8, invalid bytes replaced). A line too
    long for a message is cut and says so."""
    budget = max(max_bytes // 2, 16 * 1024)
    if not as_chunks:
        return _line_messages(task_id, chunks, budget)
    out: list[tuple[pb.WorkerMessage, int, int]] = []
    message, size, count, text_bytes = None, 0, 0, 0
    for chunk in chunks:
        code, seq, text = _STREAM[chunk.stream], chunk.first_seq, chunk.text
        while text:
            if message is None:
                message = pb.WorkerMessage(logs=pb.LogBatch(task_id=task_id))
                add = message.logs.chunks.add
                size = count = text_bytes = 0
            room = budget - size - 48  # 48: a chunk's own fields and framing
            if len(text) <= room:
                piece, text = text, b""
                n = chunk.lines if seq == chunk.first_seq else piece.count(b"\n")
            else:  # the message is full: split the chunk at a line
                cut = text.rfind(b"\n", 0, max(room, 0)) + 1
                if cut:
                    piece, text = text[:cut], text[cut:]
                    n = piece.count(b"\n")
                elif size:  # not one more line fits: the next message
                    out.append((message, count, text_bytes))
                    message = None
                    continue
                else:  # one line longer than a whole message: cut it, say so
                    piece, text, n = text[: budget - 96] + _CUT, text[text.index(b"\n") + 1 :], 1
            add(first_seq=seq, stream=code, time_ms=chunk.time_ms, text=piece)
            seq += n
            count += n
            size += len(piece) + 48
            text_bytes += len(piece)
    if message is not None:
        out.append((message, count, text_bytes))
    return out


def _line_messages(task_id: str, chunks: list[LogChunk], budget: int) -> list[tuple[pb.WorkerMessage, int, int]]:
    """A LogLine per line, for a master that does not take chunks. Lines are added in
    place (lines.add): a LogLine object per line would cost more than the line."""
    out: list[tuple[pb.WorkerMessage, int, int]] = []
    message, size, count, text_bytes = None, 0, 0, 0
    for chunk in chunks:
        code, time_ms = _STREAM[chunk.stream], chunk.time_ms
        for seq, text in enumerate(chunk.text.decode("utf-8", "replace").split("\n")[:-1], chunk.first_seq):
            if len(text) > budget - 64:  # one pathological line: cut it, say so
                text = text[: budget - 96] + " [hivemind: line truncated]"
            cost = len(text) + 32
            if message is None or size + cost > budget:
                if message is not None:
                    out.append((message, count, text_bytes))
                message = pb.WorkerMessage(logs=pb.LogBatch(task_id=task_id))
                add = message.logs.lines.add
                size = count = text_bytes = 0
            add(seq=seq, stream=code, text=text, time_ms=time_ms)
            size += cost
            count += 1
            text_bytes += len(text) + 1
    if message is not None:
        out.append((message, count, text_bytes))
    return out


def report_from_sample(sample: Mapping[str, Any], free: Resources | None = None) -> pb.TelemetryReport:
    """``sample`` is a flat mapping as produced by the telemetry collectors."""
    report = pb.TelemetryReport(
        time_ms=int(sample.get("time_ms", 0)),
        cpu_percent=float(sample.get("cpu_percent", 0.0)),
        memory_percent=float(sample.get("memory_percent", 0.0)),
        memory_used_bytes=int(sample.get("memory_used_bytes", 0)),
        memory_total_bytes=int(sample.get("memory_total_bytes", 0)),
        gpu_percent=float(sample.get("gpu_percent", 0.0)),
        load1=float(sample.get("load1", 0.0)),
        disk_free_bytes=int(sample.get("disk_free_bytes", 0)),
    )
    for gpu in sample.get("gpus", ()):
        report.gpus.add(
            index=int(gpu.get("index", 0)),
            uuid=str(gpu.get("uuid", "")),
            name=str(gpu.get("name", "")),
            utilization_percent=float(gpu.get("utilization_percent", 0.0)),
            memory_used_bytes=int(gpu.get("memory_used_bytes", 0)),
            memory_total_bytes=int(gpu.get("memory_total_bytes", 0)),
            temperature_c=float(gpu.get("temperature_c", 0.0)),
            power_w=float(gpu.get("power_w", 0.0)),
        )
    for task in sample.get("tasks", ()):
        report.tasks.add(
            task_id=str(task.get("task_id", "")),
            cpu_percent=float(task.get("cpu_percent", 0.0)),
            memory_bytes=int(task.get("memory_bytes", 0)),
            read_bytes=int(task.get("read_bytes", 0)),
            write_bytes=int(task.get("write_bytes", 0)),
        )
    reward = sample.get("reward")
    if reward:
        report.reward.report = int(reward.get("report", 0))
        report.reward.today = int(reward.get("today", 0))
        report.reward.total = int(reward.get("total", 0))
    if free is not None:
        report.free.CopyFrom(resources_to_pb(free))
    return report


# ---------------------------------------------------------------- master -> worker
@dataclass(frozen=True)
class Welcome:
    session_id: str
    report_interval_s: int = 0  # 0 = keep the node's setting
    server_time_ms: int = 0
    log_chunks: bool = False  # the master takes LogBatch.chunks (else LogLines)


@dataclass(frozen=True)
class Assign:
    request: TaskRequest


@dataclass(frozen=True)
class Cancel:
    task_id: str
    reason: str


@dataclass(frozen=True)
class LogAck:
    task_id: str
    seq: int


@dataclass(frozen=True)
class ResultAck:
    task_id: str
    attempt: int  # 0: the master did not say


@dataclass(frozen=True)
class EventAck:
    task_id: str
    attempt: int
    seq: int  # every event of this attempt up to and including seq is applied


@dataclass(frozen=True)
class DrainRequest:
    draining: bool
    reason: str


MasterCommand = Union[Welcome, Assign, Cancel, LogAck, ResultAck, EventAck, DrainRequest]


def request_from_pb(spec: pb.TaskSpec) -> TaskRequest:
    res = spec.resources
    return TaskRequest(
        task_id=spec.task_id,
        image=spec.image,
        command=tuple(spec.command),
        entrypoint=spec.entrypoint,
        env=dict(spec.env),
        resources=Resources(res.cpu_millicores, res.memory_bytes, res.gpu_count),
        priority=spec.priority,
        timeout_s=float(spec.timeout_s),
        network=NetworkPolicy.BRIDGE if spec.network == pb.NETWORK_POLICY_BRIDGE else NetworkPolicy.NONE,
        bundle_size=spec.bundle.size_bytes,
        bundle_sha256=spec.bundle.sha256,
        attempt=spec.attempt or 1,  # 0 on the wire: the first attempt
        no_retry=spec.no_retry,
    )


def welcome_from_pb(w: pb.Welcome) -> Welcome:
    return Welcome(w.session_id, w.report_interval_s, w.server_time_ms, w.log_chunks)


def from_master(message: pb.MasterMessage) -> MasterCommand | None:
    """The master's message as a typed command; None for a kind this node does not know."""
    kind = message.WhichOneof("kind")
    if kind == "assign":
        return Assign(request_from_pb(message.assign))
    if kind == "cancel":
        return Cancel(message.cancel.task_id, message.cancel.reason)
    if kind == "log_ack":
        return LogAck(message.log_ack.task_id, message.log_ack.seq)
    if kind == "result_ack":
        return ResultAck(message.result_ack.task_id, message.result_ack.attempt)
    if kind == "event_ack":
        a = message.event_ack
        return EventAck(a.task_id, a.attempt or 1, a.seq)
    if kind == "drain":
        return DrainRequest(message.drain.draining, message.drain.reason)
    if kind == "welcome":
        return welcome_from_pb(message.welcome)
    return None
