"""Following a container's logs: one dedicated thread reads Docker's multiplexed
log stream and feeds the event loop batches of lines (no polling).

The thread parses frames itself (8-byte header: stream id, length) because
docker-py's helpers drop the stream id. Lines are split on newlines, carry the
time Docker stamped them with, and a line longer than MAX_LINE_BYTES is cut into
pieces so a task printing without newlines cannot grow the agent's memory. At
most MAX_BATCHES_IN_FLIGHT batches wait for the consumer; a slow consumer slows
the reader (and Docker buffers in its own log file), so memory stays flat.

This module must not interpret the lines (sequence numbers, spooling, dropping
are the task manager's business).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import socket
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from hivemind_worker.errors import WorkerError
from hivemind_worker.vocab import LogStream

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 256 * 1024
MAX_BATCHES_IN_FLIGHT = 32
READ_BYTES = 256 * 1024
_STREAMS = {1: LogStream.STDOUT, 2: LogStream.STDERR}
_END = object()

Line = tuple[LogStream, str, int]


def docker_time_ms(stamp: str) -> int:
    """Docker's RFC 3339 time (UTC, up to nanoseconds) -> epoch milliseconds; the one
    parser of it (log lines here, container start times in docker_runtime.py).
    ValueError when it is not one."""
    head, _, rest = stamp.partition(".")
    seconds = calendar.timegm(time.strptime(head.rstrip("Z"), "%Y-%m-%dT%H:%M:%S"))
    digits = "".join(c for c in rest[:3] if c.isdigit())
    return seconds * 1000 + (int(digits.ljust(3, "0")) if digits else 0)


class _Clock:
    """RFC 3339 (Docker's fixed nanosecond form, UTC) -> epoch milliseconds, with
    the seconds part cached: consecutive lines almost always share it."""

    def __init__(self) -> None:
        self._head = b""
        self._epoch_ms = 0

    def ms(self, stamp: bytes) -> int:
        head = stamp[:19]
        if head != self._head:
            try:
                self._epoch_ms = docker_time_ms(head.decode())
            except ValueError:
                return int(time.time() * 1000)
            self._head = head
        frac = stamp[20:23] if stamp[19:20] == b"." else b""
        digits = bytes(c for c in frac if 48 <= c <= 57)
        return self._epoch_ms + (int(digits.ljust(3, b"0")) if digits else 0)


class FrameParser:
    """Docker's multiplexed, timestamped log stream -> complete lines."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._pending_ms: dict[int, int] = {1: 0, 2: 0}
        self._clock = _Clock()

    def feed(self, chunk: bytes) -> list[Line]:
        buf = self._buf
        buf += chunk
        out: list[Line] = []
        pos, size = 0, len(buf)
        while size - pos >= 8:
            length = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if size - pos - 8 < length:
                break
            stream_id = buf[pos]
            self._message(stream_id, bytes(buf[pos + 8 : pos + 8 + length]), out)
            pos += 8 + length
        del buf[:pos]
        return out

    def flush(self) -> list[Line]:
        """Whatever was printed without a final newline."""
        out: list[Line] = []
        for stream_id, pending in self._pending.items():
            if pending:
                out.append(self._line(stream_id, pending, self._pending_ms[stream_id]))
                pending.clear()
        return out

    def _message(self, stream_id: int, payload: bytes, out: list[Line]) -> None:
        if stream_id not in self._pending:
            return  # stdin echo or unknown: not a task's output
        stamp, _, text = payload.partition(b" ")
        at_ms = self._clock.ms(stamp)
        pending = self._pending[stream_id]
        if not pending:
            self._pending_ms[stream_id] = at_ms
        start = 0
        while True:
            nl = text.find(b"\n", start)
            if nl < 0:
                pending += text[start:]
                break
            pending += text[start:nl]
            out.append(self._line(stream_id, pending, self._pending_ms[stream_id]))
            pending.clear()
            self._pending_ms[stream_id] = at_ms
            start = nl + 1
        while len(pending) > MAX_LINE_BYTES:
            out.append(self._line(stream_id, pending[:MAX_LINE_BYTES], self._pending_ms[stream_id]))
            del pending[:MAX_LINE_BYTES]

    @staticmethod
    def _line(stream_id: int, raw: bytearray, at_ms: int) -> Line:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return (_STREAMS[stream_id], raw.decode("utf-8", "replace"), at_ms)


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


def body_blocks(response: Any) -> Iterator[bytes]:
    """The response body as it arrives, in blocks of up to READ_BYTES."""
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


async def follow(
    open_stream: Callable[[], Any],
    api_of: Callable[[], Any],
    translate: Callable[[BaseException], WorkerError],
    name: str,
) -> AsyncIterator[Line]:
    """Yield (stream, line, time_ms) until the stream ends (the container exited)."""
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
            response = open_stream()
            held["response"] = response
            if stop.is_set():
                return
            parser = FrameParser()
            for chunk in body_blocks(response):
                if stop.is_set():
                    return
                lines = parser.feed(chunk)
                if lines:
                    while not slots.acquire(timeout=0.5):
                        if stop.is_set():
                            return
                    deliver(lines)
            rest = parser.flush()
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
            if isinstance(item, BaseException):
                raise translate(item) from item
            slots.release()
            for line in item:
                yield line
    finally:
        stop.set()
        response = held.get("response")
        if response is not None:
            # Wakes the reading thread if it is blocked in recv() on a quiet task.
            try:
                _raw_socket(api_of(), response).shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
