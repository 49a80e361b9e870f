"""Translation between wire messages (protobuf) and the task vocabulary."""

from __future__ import annotations

from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.tasks.model import (
    HeldTask,
    LogRecord,
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


def resources_to_pb(r: Resources) -> pb.Resources:
    return pb.Resources(cpu_millicores=r.cpu_millicores, memory_bytes=r.memory_bytes, gpu_count=r.gpu_count)


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
    )


def event_to_pb(event: TaskEvent) -> pb.WorkerMessage:
    return pb.WorkerMessage(
        task_event=pb.TaskEvent(
            task_id=event.task_id,
            state=_STATE[event.status],
            reason=event.reason,
            exit_code=event.exit_code,
            time_ms=event.time_ms,
            detail=event.detail,
        )
    )


def log_batches(task_id: str, lines: list[LogRecord], max_bytes: int) -> list[pb.WorkerMessage]:
    """Split lines into messages that stay well under the session's size limit."""
    budget = max(max_bytes // 2, 16 * 1024)
    batches: list[pb.WorkerMessage] = []
    current: list[pb.LogLine] = []
    size = 0
    for line in lines:
        text = line.text
        if len(text) > budget - 64:  # one pathological line: cut it, say so
            text = text[: budget - 96] + " [hivemind: line truncated]"
        entry = pb.LogLine(seq=line.seq, stream=_STREAM[line.stream], text=text, time_ms=line.time_ms)
        cost = len(text) + 32
        if current and size + cost > budget:
            batches.append(pb.WorkerMessage(logs=pb.LogBatch(task_id=task_id, lines=current)))
            current, size = [], 0
        current.append(entry)
        size += cost
    if current:
        batches.append(pb.WorkerMessage(logs=pb.LogBatch(task_id=task_id, lines=current)))
    return batches


def held_to_pb(held: HeldTask) -> pb.HeldTask:
    return pb.HeldTask(
        task_id=held.task_id,
        state=_STATE[held.status],
        last_log_seq=held.last_log_seq,
        result_pending=held.result_pending,
    )
