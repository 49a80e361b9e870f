"""Moving a task's log lines: container -> spool (the pump) -> host (the sender).

The pump follows the container's log stream (Docker pushes lines; nothing polls)
into the task's LogSpool, in chunks of lines as the reader gives them (no per-line
work in the usual case), which batches them (FLUSH_LINES lines / FLUSH_BYTES) and
a ticker flushes what is left every BATCH_INTERVAL_S, so a quiet task's lines still
leave within 50 ms. The sender reads flushed lines back from the spool and hands
them to the host in order: what is pending, up to SEND_MAX_LINES / SEND_MAX_BYTES
per call (a master that is behind gets fewer, larger batches); it never holds more than
one batch, so a slow or absent master costs disk (bounded by the spool), not memory.

A resumed read (the agent restarted, the engine came back, a stalled reader was
replaced) gets the engine's whole log of the container and skips, per stream, as
many lines as the spool holds, counted inside its chunks (the reader cuts lines
alike however the stream came: runtime/logstream.py), so no line is lost or
doubled; the last skipped line is checked against the spool's. The live read (the attach stream) stamps a line with
the time it was read, which the engine's log does not know: a count, not a time,
says where to resume. What an interrupted read had of an unfinished line waits in
the spool's ``carry`` and is joined to that line when the resumed read gets it (the
engine's log may have lost the part it had not written yet when it went away).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

from hivemind_worker.runtime.api import ContainerRuntime
from hivemind_worker.runtime.logstream import INTERRUPTED, Chunk
from hivemind_worker.tasks.logspool import LogSpool
from hivemind_worker.tasks.model import LogStream, TaskHost

logger = logging.getLogger(__name__)

BATCH_INTERVAL_S = 0.05
# Lines sent but not yet acknowledged, at most: flow control that holds whatever
# the transport does with a message (queues it, say) to a few MB per task, and lets
# the spool, on disk, absorb a slow master instead of the agent's memory.
SEND_WINDOW_LINES = 40_000
SEND_WINDOW_BYTES = 4 * 1024 * 1024  # and at most this much text: long lines make few lines many MB
SEND_MAX_LINES = 10_000  # large batches: the master's cost per batch (a transaction) is paid less often
SEND_MAX_BYTES = 1024 * 1024  # well under the session's message limit (4 MiB by default)


class LogSender:
    """Sends a task's spooled lines to the host in seq order; resends after resync."""

    def __init__(self, task_id: str, spool: LogSpool, host: TaskHost, acked_seq: int) -> None:
        self.task_id = task_id
        self.spool = spool
        self.host = host
        self.acked_seq = acked_seq
        self.sent_seq = acked_seq
        self.online = True
        self.window = SEND_WINDOW_LINES
        self._in_flight: collections.deque[tuple[int, int]] = collections.deque()  # unacked: (last seq, bytes)
        self._in_flight_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"logs-{self.task_id}")
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def ack(self, seq: int) -> None:
        self.acked_seq = max(self.acked_seq, min(seq, self.spool.flushed_seq))
        self.sent_seq = max(self.sent_seq, self.acked_seq)
        while self._in_flight and self._in_flight[0][0] <= self.acked_seq:
            self._in_flight_bytes -= self._in_flight.popleft()[1]
        self._wake.set()  # the window moved

    def resync(self) -> None:
        """A new session: everything not acknowledged goes again, with the same seqs."""
        self.sent_seq = self.acked_seq
        self._in_flight.clear()
        self._in_flight_bytes = 0
        self.online = True
        self._wake.set()

    async def drained(self, clock: Callable[[], float], grace_s: float) -> bool:
        """Wait until every flushed line is acknowledged (True), or until acks made no
        progress for grace_s (False). Keeps nudging the sender meanwhile."""
        last, idle_since = -1, clock()
        while self.acked_seq < self.spool.flushed_seq:
            if self.acked_seq != last:
                last, idle_since = self.acked_seq, clock()
            elif clock() - idle_since > grace_s:
                return False
            self._wake.set()
            await asyncio.sleep(0.05)
        return True

    @property
    def caught_up(self) -> bool:
        return self.sent_seq >= self.spool.flushed_seq

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.online and self.sent_seq < self.spool.flushed_seq:
                room = self.acked_seq + self.window - self.sent_seq
                if room <= 0 or self._in_flight_bytes >= SEND_WINDOW_BYTES:
                    break  # wait for acknowledgements (ack() wakes us)
                batch = self.spool.read(self.sent_seq + 1, min(SEND_MAX_LINES, room), SEND_MAX_BYTES)
                if not batch:
                    break
                try:
                    await self.host.emit_logs(self.task_id, batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the session is down: resync() resends
                    logger.info(
                        "log lines of %s not sent (%s); they stay spooled until the next session",
                        self.task_id, exc, extra={"task_id": self.task_id},
                    )
                    self.online = False
                    break
                self.sent_seq = max(self.sent_seq, batch[-1].last_seq)
                size = sum(len(chunk.text) for chunk in batch)
                self._in_flight.append((batch[-1].last_seq, size))
                self._in_flight_bytes += size

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


async def _tick(spool: LogSpool, sender: LogSender) -> None:
    while True:
        await asyncio.sleep(BATCH_INTERVAL_S)
        if spool.pending:
            spool.flush()
        if not sender.caught_up:
            sender.wake()


async def pump(runtime: ContainerRuntime, container_id: str, spool: LogSpool, sender: LogSender) -> None:
    """Follow the container's output into the spool until the container exits."""
    skip = {stream: n for stream, n in spool.counts().items() if n}
    carry = spool.carry
    ticker = asyncio.create_task(_tick(spool, sender))
    flushed = spool.flushed_seq
    try:
        async for batch in runtime.follow_logs(container_id):
            if not batch:
                continue
            if not skip and not carry and batch[0][2] != INTERRUPTED:
                spool.add_many(batch)  # the usual case: nothing to skip, carry or hold back
            else:
                spool.add_many(_resumed(spool, batch, skip, carry))
            if spool.flushed_seq != flushed:
                flushed = spool.flushed_seq
                sender.wake()
    finally:
        ticker.cancel()
        spool.flush()
        sender.wake()


def _resumed(spool: LogSpool, batch: list[Chunk], skip: dict[LogStream, int],
             carry: dict[LogStream, bytes]) -> list[Chunk]:
    """What to spool of a batch of a resumed read (``skip``: how many lines per stream
    the spool has), of a broken stream (INTERRUPTED) or after one (``carry``)."""
    out: list[Chunk] = []
    for stream, text, time_ms in batch:
        if time_ms == INTERRUPTED:  # no line yet: what the stream had of one when it broke
            if not skip.get(stream):
                held = carry.get(stream, b"")
                carry[stream] = text if text.startswith(held) else held + text
            continue
        left = skip.get(stream, 0)
        if left:
            lines = text.count(b"\n")
            if lines < left:
                skip[stream] = left - lines
                continue
            del skip[stream]
            cut = len(text) - len(text.split(b"\n", left)[-1])  # after the last line to skip
            _check_aligned(spool, stream, text[text.rfind(b"\n", 0, cut - 1) + 1 : cut - 1], time_ms, out)
            text = text[cut:]
            if not text:
                continue
        if stream in carry:
            held = carry.pop(stream)
            if not text.startswith(held):  # the engine lost what it had not logged yet
                text = held + text
        out.append((stream, text, time_ms))
    return out


def _check_aligned(spool: LogSpool, stream: LogStream, line: bytes, time_ms: int, before: list[Chunk]) -> None:
    if line == spool.last_text(stream):
        return
    spool.add_many(before)  # the lines read before this one go first
    before.clear()
    # The engine's log no longer starts where it did (rotated away) or differs: say so
    # where the reader of the log will see it.
    logger.warning("resumed log read of %s did not line up with the spool (%s line %r, spooled %r)",
                   spool.path, stream.value, line[:80], (spool.last_text(stream) or b"")[:80])
    spool.system("[hivemind] the engine's log did not line up with what was read before (rotated?); "
                 "lines around here may be missing or repeated", time_ms)
