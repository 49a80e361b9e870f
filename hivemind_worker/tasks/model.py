"""The task vocabulary shared by the task manager, the agent and the monitor.

These are plain values, independent of the wire format: the agent translates them
to and from protobuf messages at the session boundary.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

from hivemind_worker.usage import SignedRecord

# Defined below both the runtime and the tasks; part of the task vocabulary too.
from hivemind_worker.vocab import LogStream as LogStream
from hivemind_worker.vocab import NetworkPolicy as NetworkPolicy


class TaskStatus(str, enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FETCHING = "fetching"
    PULLING = "pulling"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    OOM_KILLED = "oom_killed"
    UPLOADING = "uploading"
    DONE = "done"
    # "Not now" (draining, full, host pressure, low disk): not an outcome; the node
    # holds nothing and the master keeps the task queued.
    DEFERRED = "deferred"
    # An infrastructure failure (engine restart, container vanished): not the task's
    # fault; an outcome, and the master may run the task again.
    LOST = "lost"

    @property
    def finished(self) -> bool:
        """The task's process will not run (again); only result delivery may remain."""
        return self in _FINISHED


_FINISHED = {
    TaskStatus.REJECTED,
    TaskStatus.EXITED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.TIMED_OUT,
    TaskStatus.OOM_KILLED,
    TaskStatus.LOST,
    TaskStatus.UPLOADING,
    TaskStatus.DONE,
}


@dataclass(frozen=True)
class Resources:
    cpu_millicores: int = 0  # 1000 = one core
    memory_bytes: int = 0
    gpu_count: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(
            self.cpu_millicores + other.cpu_millicores,
            self.memory_bytes + other.memory_bytes,
            self.gpu_count + other.gpu_count,
        )

    def __sub__(self, other: "Resources") -> "Resources":
        return Resources(
            self.cpu_millicores - other.cpu_millicores,
            self.memory_bytes - other.memory_bytes,
            self.gpu_count - other.gpu_count,
        )


@dataclass(frozen=True)
class TaskRequest:
    """What the master asked for (TaskSpec on the wire)."""

    task_id: str
    image: str = ""  # empty = the node's default task image
    command: tuple[str, ...] = ()  # empty = the bundle's entry point
    entrypoint: str = ""  # file in the bundle; empty = main.py
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    priority: int = 0
    timeout_s: float = 0  # 0 = the node's default
    network: NetworkPolicy = NetworkPolicy.NONE
    bundle_size: int = 0  # 0 = no bundle
    bundle_sha256: str = ""
    attempt: int = 1  # which run of this task, from 1; a lost task comes back as a new attempt
    no_retry: bool = False  # the submitter opted out of re-running a lost task


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class TaskEvent:
    task_id: str
    status: TaskStatus
    reason: str = ""
    exit_code: int = 0
    detail: str = ""
    time_ms: int = field(default_factory=now_ms)
    # Per attempt, from 1, without gaps, for the state changes the master must learn
    # (journaled, resent until acknowledged); 0 = progress only (pull detail, DEFERRED).
    seq: int = 0
    attempt: int = 1


@dataclass(frozen=True)
class LogRecord:
    seq: int  # per task, from 1, without gaps
    stream: LogStream
    text: str
    time_ms: int


@dataclass(frozen=True)
class LogChunk:
    """Lines first_seq .. last_seq of one stream, read at one time: the bytes the task
    wrote (not necessarily UTF-8), each line ending in b"\\n". What the spool gives the
    sender: an object per chunk, none per line."""

    first_seq: int
    stream: LogStream
    text: bytes
    time_ms: int
    lines: int  # text.count(b"\n")

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.lines - 1

    def records(self) -> list[LogRecord]:
        """Line by line, decoded (UTF-8, invalid bytes replaced): for readers of a few lines."""
        texts = self.text.decode("utf-8", "replace").split("\n")[:-1]
        return [LogRecord(self.first_seq + i, self.stream, text, self.time_ms) for i, text in enumerate(texts)]


@dataclass(frozen=True)
class HeldTask:
    """A task the node still holds, reported in the session's hello."""

    task_id: str
    status: TaskStatus
    last_log_seq: int
    result_pending: bool
    attempt: int = 1


class DrainCause(str, enum.Enum):
    """Why the node takes no new tasks; the strongest cause names the drain."""

    SHUTDOWN = "shutdown"  # the daemon is stopping
    OPERATOR = "operator"  # `hivemind-worker drain` (SIGUSR1)
    MASTER = "master"  # the master asked


class DrainState:
    """The node's one drain state, shared by the agent (hello, telemetry, monitor) and
    the task manager (admission). Causes add up: the master resuming does not undo an
    operator's drain, and nothing undoes a shutdown."""

    def __init__(self) -> None:
        self._causes: set[DrainCause] = set()

    def start(self, cause: DrainCause) -> bool:
        """Returns True when this changed whether the node drains."""
        before = self.draining
        self._causes.add(cause)
        return before != self.draining

    def end(self, cause: DrainCause) -> bool:
        before = self.draining
        if cause is not DrainCause.SHUTDOWN:
            self._causes.discard(cause)
        return before != self.draining

    @property
    def draining(self) -> bool:
        return bool(self._causes)

    @property
    def cause(self) -> DrainCause | None:
        return next((c for c in DrainCause if c in self._causes), None)

    @property
    def reason(self) -> str:
        """The wire's drain_reason: "operator", "shutdown", "master"; "" when not draining."""
        cause = self.cause
        return cause.value if cause else ""


class Clock(Protocol):
    """Seconds since the epoch, as time.time; tests give a settable one."""

    def __call__(self) -> float: ...


class TaskHost(Protocol):
    """What the task manager needs from the outside world; the agent implements it
    over the control session. Tests give a hand-written fake."""

    async def emit_event(self, event: TaskEvent) -> None:
        """Send an event to the master; raise when it cannot be sent now. Events with
        a seq are journaled first and resent after resync until acknowledged (the
        manager's ack_event); seq 0 (progress, DEFERRED) is never resent."""

    async def emit_logs(self, task_id: str, chunks: list[LogChunk]) -> None:
        """Send log lines (chunks in seq order); the master acknowledges them later
        through ack_logs()."""

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        """Download the task's bundle into ``dest``, verified; raises on failure."""

    async def upload_result(self, task_id: str, archive: Path, attempt: int = 1, fresh: bool = False,
                            sha256: str = "") -> None:
        """Upload the attempt's archive, resuming where the master left off; returns
        when the master holds all of it (it then acknowledges through ack_result()).
        ``fresh``: built by this process and not offered before (no need to ask the
        master where to resume). ``sha256``: the archive's digest as built (the usage
        record names it too), so it is not read again per try; "" to have it read."""

    def sign_usage(self, record: dict) -> SignedRecord | None:
        """Sign a task's usage record with the node's key (None: the node has none).
        Called from the result thread; the task layer never holds the key."""
