"""Reading a container's output: one dedicated thread reads Docker's multiplexed
stream and feeds the event loop batches of chunks of lines (no polling).

A task started by the agent is read from its attach stream, opened before the
start (Attachments): the engine's own copy of the output, a frame per write of the
task, no per-line JSON or timestamps; the log driver still keeps everything for
`docker logs` and for a resumed read (the agent restarted, the engine came back),
which follows the logs endpoint (a timestamped frame per line) and skips by count
what was already read. The thread parses frames itself (docker-py's helpers drop
the stream id) and hands on the bytes the task wrote, a chunk of whole lines per
run of frames (no decoding, no per-line object: the engine's rate is hundreds of
thousands of lines a second), and cuts a line longer than MAX_LINE_BYTES into
pieces so a task printing without newlines cannot grow the agent's memory. At most MAX_BATCHES_IN_FLIGHT batches wait for the consumer; a slow consumer slows
the reader (and the task, or Docker's log file), so memory stays flat.

This module must not interpret the lines (sequence numbers, spooling, dropping
are the task manager's business).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from hivemind_worker.errors import RuntimeUnavailable, WorkerError
from hivemind_worker.runtime.dockertime import StampClock
from hivemind_worker.vocab import LogStream

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 256 * 1024
MAX_BATCHES_IN_FLIGHT = 4  # of up to READ_BYTES each: a few MB at most
READ_BYTES = 256 * 1024
_STREAMS = {1: LogStream.STDOUT, 2: LogStream.STDERR}
_END = object()
_HEADER = struct.Struct(">BxxxI").unpack_from  # stream id, 3 bytes unused, payload length
# The time of what an interrupted stream held of an unfinished line: not a line yet.
INTERRUPTED = -1

# (stream, text, time_ms): complete lines of one stream as the task wrote them, each
# ending in b"\n" (no CR before it); or, timed INTERRUPTED, what a broken stream had
# of an unfinished line (no newline).
Chunk = tuple[LogStream, bytes, int]


class FrameParser:
    """Docker's multiplexed stream -> chunks of complete lines, as the task wrote them.

    ``stamped``: every frame starts with Docker's time (the logs endpoint with
    timestamps=1, one frame per line); otherwise (the attach stream, one frame per
    write of the task, often many lines) a chunk carries the time it was read.
    No decoding and no per-line split: a run of frames of one stream is cut at its
    last newline (the rest waits for the next frame); only a chunk longer than
    MAX_LINE_BYTES can hold a line that long, so only such a chunk is looked at line
    by line. A line is cut into pieces of MAX_LINE_BYTES from its start, however the
    frames fell, so that two reads of the same output give the same lines (a resumed
    read skips lines by count)."""

    def __init__(self, stamped: bool = True, clock: Callable[[], float] = time.time) -> None:
        self._stamped = stamped
        self._now = clock
        self._buf = b""  # an unfinished frame
        self._pending: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._pending_ms: dict[int, int] = {1: 0, 2: 0}
        self._clock = StampClock()

    def feed(self, chunk: bytes) -> list[Chunk]:
        data = self._buf + chunk if self._buf else chunk
        out: list[Chunk] = []
        pos = self._stamped_frames(data, out) if self._stamped else self._frames(data, out)
        self._buf = data[pos:]
        return out

    def _frames(self, data: bytes, out: list[Chunk]) -> int:
        """Unstamped frames (the attach stream): a run of one stream's payloads is one
        chunk. Under PYTHONUNBUFFERED (run_task.sh) a task writes a frame per print, so
        this runs once per line: one unpack_from and one slice (cheaper than a
        memoryview for small payloads) per frame. Returns where an unfinished frame starts."""
        now_ms = int(self._now() * 1000)
        pos, size = 0, len(data)
        run_id, run = 0, list[bytes]()
        append = run.append
        while size - pos >= 8:
            stream_id, length = _HEADER(data, pos)
            end = pos + 8 + length
            if end > size:
                break
            if stream_id != run_id:
                if run:
                    self._text(run_id, b"".join(run), now_ms, out)
                    run.clear()
                run_id = stream_id if stream_id in self._pending else 0  # 0: stdin echo or unknown, skipped
            if run_id:
                append(data[pos + 8 : end])
            pos = end
        if run:
            self._text(run_id, b"".join(run), now_ms, out)
        return pos

    def _stamped_frames(self, data: bytes, out: list[Chunk]) -> int:
        """Stamped frames (the logs endpoint, a resumed read): a line per frame, each
        with Docker's time; consecutive lines of one stream and time become one chunk."""
        pos, size = 0, len(data)
        lines: list[Chunk] = []
        while size - pos >= 8:
            stream_id, length = _HEADER(data, pos)
            end = pos + 8 + length
            if end > size:
                break
            if stream_id in self._pending:
                stamp, _, text = data[pos + 8 : end].partition(b" ")
                self._text(stream_id, text, self._clock.ms(stamp), lines)
            pos = end
        out.extend((stream, b"".join(c[1] for c in same), ms)
                   for (stream, ms), same in itertools.groupby(lines, key=lambda c: (c[0], c[2])))
        return pos

    def flush(self) -> list[Chunk]:
        """Whatever was printed without a final newline, as a line."""
        out: list[Chunk] = []
        for stream_id, pending in self._pending.items():
            if pending:
                line = bytes(pending)
                out.append((_STREAMS[stream_id], line.removesuffix(b"\r") + b"\n", self._pending_ms[stream_id]))
                pending.clear()
        return out

    def _text(self, stream_id: int, text: bytes, at_ms: int, out: list[Chunk]) -> None:
        pending = self._pending[stream_id]
        last = text.rfind(b"\n")
        if last < 0:
            if not pending:
                self._pending_ms[stream_id] = at_ms
            pending += text
            self._overflow(stream_id, pending, out)
            return
        if pending:
            at_ms = self._pending_ms[stream_id]
            pending += text[: last + 1]
            body = bytes(pending)
            pending.clear()
        else:
            body = text[: last + 1]
        if len(body) > MAX_LINE_BYTES and _has_long_line(body):
            body = b"".join([piece + b"\n" for raw in body[:-1].split(b"\n") for piece in _pieces(raw)])
        elif b"\r" in body and b"\r\n" in body:  # one byte is found far faster than two
            body = body.replace(b"\r\n", b"\n")
        out.append((_STREAMS[stream_id], body, at_ms))
        rest = text[last + 1 :]
        if rest:
            self._pending_ms[stream_id] = at_ms
            pending += rest
            self._overflow(stream_id, pending, out)

    def _overflow(self, stream_id: int, pending: bytearray, out: list[Chunk]) -> None:
        """No newline yet: pieces of MAX_LINE_BYTES go out, so memory stays flat."""
        while len(pending) > MAX_LINE_BYTES:
            out.append((_STREAMS[stream_id], bytes(pending[:MAX_LINE_BYTES]) + b"\n", self._pending_ms[stream_id]))
            del pending[:MAX_LINE_BYTES]


def _has_long_line(body: bytes) -> bool:
    """Does body (ending in a newline) hold a line longer than MAX_LINE_BYTES? A few
    searches per MAX_LINE_BYTES of text, whatever the number of lines."""
    start = 0
    while len(body) - start > MAX_LINE_BYTES:
        last = body.rfind(b"\n", start, start + MAX_LINE_BYTES + 1)
        if last < 0:
            return True
        start = last + 1
    return False


def _pieces(line: bytes) -> list[bytes]:
    """A complete line in pieces of MAX_LINE_BYTES from its start (as _overflow cuts
    it), its CR (of a CRLF) off the last piece."""
    out = []
    while len(line) > MAX_LINE_BYTES:
        out.append(line[:MAX_LINE_BYTES])
        line = line[MAX_LINE_BYTES:]
    out.append(line[:-1] if line.endswith(b"\r") else line)
    return out


class Dechunker:
    """HTTP/1.1 chunked transfer coding -> body bytes, in bulk. Docker sends one
    chunk per log line; urllib3's per-chunk reads cost more than the lines."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # data bytes left in the current chunk
        self._crlf = False  # the CRLF after a chunk's data is still to skip
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        out = bytearray()
        pos, size = 0, len(buf)
        while not self.done:
            if self._left:
                take = min(self._left, size - pos)
                out += buf[pos : pos + take]
                pos += take
                self._left -= take
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if size - pos < 2:
                    break
                pos += 2
                self._crlf = False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            length = int(bytes(buf[pos:end]).split(b";")[0], 16)
            pos = end + 2
            if length == 0:
                self.done = True
            self._left = length
        del buf[:pos]
        return bytes(out)


class RawStream:
    """A hijacked response body read straight from the engine's socket (the attach
    stream opened through engine_probe): its buffered reader and the socket."""

    def __init__(self, fp: Any, sock: socket.socket, closers: tuple[Any, ...]) -> None:
        self.fp, self.sock, self._closers = fp, sock, closers

    def close(self) -> None:
        for thing in self._closers:
            thing.close()


def body_blocks(response: Any) -> Iterator[bytes]:
    """The response body as it arrives, in blocks of up to READ_BYTES."""
    if isinstance(response, RawStream):
        yield from iter(lambda: response.fp.read1(READ_BYTES), b"")
        return
    fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
    headers = response.headers
    if fp is None or not hasattr(fp, "read1") or "Content-Length" in headers:
        yield from response.raw.stream(READ_BYTES, decode_content=False)
        return
    # Straight from the buffered socket reader (docker-py reaches the same object
    # in _get_raw_response_socket); no body byte has been read from it yet.
    chunked = headers.get("Transfer-Encoding", "").lower() == "chunked"
    dechunker = Dechunker() if chunked else None
    while True:
        block = fp.read1(READ_BYTES)
        if not block:
            return
        if dechunker is None:
            yield block
            continue
        body = dechunker.feed(block)
        if body:
            yield body
        if dechunker.done:
            return


def _raw_socket(api: Any, response: Any) -> Any:
    if isinstance(response, RawStream):
        return response.sock
    sock = api._get_raw_response_socket(response)
    return getattr(sock, "_sock", sock)


def open_log_stream(api: Any, container_id: str, since_s: float | None) -> Any:
    """The streaming HTTP response of GET /containers/{id}/logs?follow=1."""
    params: dict[str, Any] = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 1, "tail": "all"}
    if since_s is not None:
        # Whole microseconds: "%.9f" of a float like 1795886401.123 gives
        # ...122999906, and rounding the other way would lose a line (since is inclusive).
        micros = round(since_s * 1_000_000)
        params["since"] = f"{micros // 1_000_000}.{micros % 1_000_000:06d}"
    response = api._get(api._url("/containers/{0}/logs", container_id), params=params, stream=True)
    api._raise_for_status(response)
    # A quiet task must not make the read time out (docker-py does the same).
    api._disable_socket_timeout(api._get_raw_response_socket(response))
    return response


def _still_running(running: Callable[[], bool]) -> bool:
    """The stream ended: did the container? (Its state may lag its output by a moment.)"""
    for _ in range(10):
        if not running():
            return False
        time.sleep(0.1)
    return True


async def follow(
    open_stream: Callable[[], tuple[Any, bool]],
    api_of: Callable[[], Any],
    translate: Callable[[BaseException], WorkerError],
    name: str,
    running: Callable[[], bool] | None = None,
) -> AsyncIterator[list[Chunk]]:
    """Yield batches of chunks (stream, lines, time_ms) until the stream ends (the container exited).

    ``open_stream`` gives (response, stamped). A stream that ends while the container
    still runs (``running``; the engine went away) raises RuntimeUnavailable, after
    yielding what it held of an unfinished line with the time INTERRUPTED: that is no
    line yet (a resumed read gets it whole, if the engine kept it)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    slots = threading.Semaphore(MAX_BATCHES_IN_FLIGHT)
    stop = threading.Event()
    held: dict[str, Any] = {}

    def deliver(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def pump() -> None:
        response = None
        try:
            response, stamped = open_stream()
            held["response"] = response
            if stop.is_set():
                return
            parser = FrameParser(stamped)
            for block in body_blocks(response):
                if stop.is_set():
                    return
                chunks = parser.feed(block)
                if chunks:
                    while not slots.acquire(timeout=0.5):
                        if stop.is_set():
                            return
                    deliver(chunks)
            rest = parser.flush()
            if rest and running is not None:
                try:
                    cut = _still_running(running)
                except BaseException:
                    deliver([(s, text[:-1], INTERRUPTED) for s, text, _ in rest])
                    raise
                if cut:
                    deliver([(s, text[:-1], INTERRUPTED) for s, text, _ in rest])
                    deliver(RuntimeUnavailable(
                        f"the log stream of {name} ended while the container still runs (the engine went "
                        "away?); its output is read again from the engine's log"))
                    return
            if rest:
                deliver(rest)
            deliver(_END)
        except BaseException as exc:  # handed to the consumer, translated there
            if not stop.is_set():
                deliver(exc)
        finally:
            if response is not None:
                response.close()

    threading.Thread(target=pump, name=f"hivemind-logs-{name}", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, WorkerError):
                raise item
            if isinstance(item, BaseException):
                raise translate(item) from item
            slots.release()
            yield item
    finally:
        stop.set()
        response = held.get("response")
        if response is not None:
            # Wakes the reading thread if it is blocked in recv() on a quiet task.
            try:
                _raw_socket(api_of(), response).shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
