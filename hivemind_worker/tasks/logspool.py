"""A task's log lines on disk: sequence-numbered, bounded, readable back from any seq.

One append-only file per task, one record per chunk (consecutive lines of one
stream read at one time, runtime/logstream.py): a header
``<first_seq>\\t<o|e|s>\\t<time_ms>\\t<lines>\\t<length>\\n`` and then ``length`` bytes
of text, the lines as the task wrote them, each ending in a newline (counted once,
when spooled: a count costs a pass over the text). Sequence numbers start
at 1 and have no gaps (a chunk of n lines holds first_seq .. first_seq+n-1). The
file is the spool the sender re-reads after a reconnect (lines the master has not
acknowledged are sent again with the same seqs, a chunk split where the ack fell)
and, once the task ended, the ``logs`` file of its result archive.

Bounded: once the file would pass ``max_bytes`` the chunk is cut after its last
line that fits, every further line is dropped (the log stays a contiguous prefix)
and ``finish()`` appends ONE system line saying how many lines and bytes were
dropped. A full disk (ENOSPC) is treated the same way: the lines that could not be
written are dropped (the file is cut back to its last whole record, so it stays a
gapless prefix), ``disk_error`` says why (the runner then stops the task) and the
marker line is written once there is room again. Memory stays flat whatever the
task prints: a small write buffer, a sparse seq -> offset index (an entry per
_INDEX_EVERY lines or more, at record starts) and the offsets of the last few
records for the monitor's tail.

Recovery: ``LogSpool(path, ...)`` on an existing file re-reads it, cuts a torn last
record (the agent was killed mid-write) and restores the position, so the log pump
can resume from the container's logs without a duplicate: ``counts()`` says how many
lines of each stream the spool holds (the pump skips as many), ``last_text()`` the
last one of each (to check that the skip lined up). ``carry`` holds, in memory only,
what an interrupted read had of an unfinished line (see logpump.pump).

This module does file I/O only (buffered writes to the page cache, one write per
FLUSH_LINES/FLUSH_BYTES, done on the event loop on purpose: they cost microseconds
and keep lines strictly ordered); it knows nothing about Docker or the master.
It does no per-line work: a chunk is counted (bytes.count) and copied, never split,
except where a read starts or stops inside it or the limit falls in it.
"""

from __future__ import annotations

import bisect
import collections
import io
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from hivemind_worker.tasks.model import LogChunk, LogRecord, LogStream

_STREAMS = (LogStream.STDOUT, LogStream.STDERR, LogStream.SYSTEM)
_BCODES = (b"o", b"e", b"s")  # per index in _STREAMS; per-chunk state is indexed, not keyed by
# the enum: an Enum's __hash__ is Python code.
_BSTREAM = dict(zip(_BCODES, _STREAMS))
_INDEX_EVERY = 256  # an offset per this many lines or more: ~100 KB of index per million lines at most
_RECENT = 128  # offsets of the last records kept for tail()
FLUSH_LINES = 2000
FLUSH_BYTES = 256 * 1024
TAIL_BYTES = 256 * 1024  # read back for tail(): the monitor's last lines
_MARKERS = (b"[hivemind] log limit", b"[hivemind] node disk full")

Chunk = tuple[LogStream, bytes, int]  # (stream, lines each ending in b"\n", time_ms)


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _after_lines(text: bytes, n: int) -> int:
    """The offset just after the n-th line of text (0 for n = 0)."""
    return len(text) - len(text.split(b"\n", n)[-1]) if n else 0


def _records(fh: BinaryIO, check: bool = False) -> Iterator[tuple[int, int, int, int, bytes, int]]:
    """(first_seq, stream index, time_ms, lines, text, record length) of each whole
    record from fh's position on; stops at the first torn or malformed one (``check``:
    its line count too, for a file not read since the agent started)."""
    while True:
        head = fh.readline()
        try:
            first, code, time_ms, count, length = head.split(b"\t")
            seq, k, ms, lines, n = int(first), _BCODES.index(code), int(time_ms), int(count), int(length)
        except ValueError:  # the end, or a torn header: the agent died mid-write
            return
        text = fh.read(n) if head.endswith(b"\n") else b""
        if len(text) != n or not text.endswith(b"\n") or (check and text.count(b"\n") != lines):
            return  # a torn text
        yield seq, k, ms, lines, text, len(head) + n


def _upgrade(path: Path) -> None:
    """A spool of an agent before chunks (a record per line: ``seq\\tcode\\ttime\\ttext``),
    met when an upgrade hands a running task over: rewritten as chunks (lines of one
    stream and time together), so the new agent resumes it by count like its own."""
    with open(path, "rb") as fh:
        if next(_records(fh, check=True), None) is not None:
            return  # chunks already (or empty)
        fh.seek(0)
        head = fh.readline().rstrip(b"\n").split(b"\t")
        if len(head) == 5 and head[3].isdigit() and head[4].isdigit():
            return  # the header of a torn first chunk, not a line (recovery cuts it)
        fh.seek(0)
        out: list[bytes] = []
        run: list[bytes] = []
        key: tuple[bytes, bytes] = (b"", b"")
        seq = first = 1
        for raw in fh:
            fields = raw.rstrip(b"\n").split(b"\t", 3)
            if not raw.endswith(b"\n") or len(fields) != 4 or fields[0] != b"%d" % seq or fields[1] not in _BCODES:
                break  # a torn record: the old agent died mid-write
            if run and (fields[1], fields[2]) != key:
                out.append(b"%d\t%b\t%b\t%d\t%d\n%b" % (first, *key, len(run), sum(map(len, run)), b"".join(run)))
                run, first = [], seq
            key = (fields[1], fields[2])
            run.append(fields[3] + b"\n")
            seq += 1
        if run:
            out.append(b"%d\t%b\t%b\t%d\t%d\n%b" % (first, *key, len(run), sum(map(len, run)), b"".join(run)))
    if seq == 1:
        return  # nothing of the old format either: recovery cuts what is there
    tmp = path.with_name(path.name + ".upgrade")
    tmp.write_bytes(b"".join(out))
    os.replace(tmp, path)


def render_text(spool_path: Path, dest: Path) -> None:
    """The spool as a plain log file (the raw bytes of every line, system lines
    included) for the result archive. Blocking: run it in a thread."""
    with open(spool_path, "rb") as src, open(dest, "wb") as out:
        texts: list[bytes] = []
        size = 0
        for _, _, _, _, text, _ in _records(src):
            texts.append(text)
            size += len(text)
            if size >= 1024 * 1024:
                out.write(b"".join(texts))
                texts, size = [], 0
        out.write(b"".join(texts))


class LogSpool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.last_seq = 0  # last seq written to the file (or buffered)
        self.flushed_seq = 0  # last seq readable from the file
        self.size = 0  # bytes in the file + buffer
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.finished = False  # the drop marker / end was written
        self.disk_error = ""  # why the file could not be written (ENOSPC), if it could not
        self._counts = [0, 0, 0]  # lines spooled per stream (index in _STREAMS)
        self._last: list[bytes | None] = [None, None, None]  # the last chunk, per stream
        self.carry: dict[LogStream, bytes] = {}  # an interrupted read's unfinished line
        self._index_seq: list[int] = []
        self._index_off: list[int] = []
        self._recent: collections.deque[int] = collections.deque(maxlen=_RECENT)
        self._buf: list[bytes] = []  # headers and texts, in order
        self._buf_meta: list[tuple[int, int]] = []  # (stream index, lines) per buffered record
        self._buf_lines = 0
        self._buf_bytes = 0
        self._cursor = (0, 0)  # (first seq, offset) of a record: where the last read stopped
        path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._w = open(path, "ab", buffering=0)
        self._r = open(path, "rb")

    # -- recovery -------------------------------------------------------------------
    def _recover(self) -> None:
        if not self.path.exists():
            return
        _upgrade(self.path)
        good = 0
        with open(self.path, "rb") as fh:
            for first, k, _, lines, text, length in _records(fh, check=True):
                if first != self.last_seq + 1:
                    break
                self._note(first, k, lines, text, good)
                if k == 2 and text.startswith(_MARKERS):
                    self.finished = True
                good += length
        if good != self.path.stat().st_size:
            os.truncate(self.path, good)
        self.size = good
        self.flushed_seq = self.last_seq

    def _note(self, seq: int, k: int, lines: int, text: bytes, offset: int) -> None:
        """A record at offset: the index, the counts, the last chunk per stream."""
        if not self._index_seq or seq - self._index_seq[-1] >= _INDEX_EVERY:
            self._index_seq.append(seq)
            self._index_off.append(offset)
        self._recent.append(offset)
        self._counts[k] += lines
        self._last[k] = text
        self.last_seq = seq + lines - 1

    def counts(self) -> dict[LogStream, int]:
        """How many lines of the container's stdout and stderr the spool holds."""
        return {LogStream.STDOUT: self._counts[0], LogStream.STDERR: self._counts[1]}

    def last_text(self, stream: LogStream) -> bytes | None:
        """The last line of a stream, without its newline."""
        text = self._last[_STREAMS.index(stream)]
        return None if text is None else text[text.rfind(b"\n", 0, len(text) - 1) + 1 : -1]

    # -- writing --------------------------------------------------------------------
    def add(self, stream: LogStream, text: str | bytes, time_ms: int) -> None:
        """One line (without its newline; one inside it becomes a space)."""
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        self.add_many([(stream, data.replace(b"\n", b" ") + b"\n", time_ms)])

    def add_many(self, chunks: list[Chunk]) -> None:
        """Chunks of whole lines (stream, text, time_ms), a record each."""
        for stream, text, time_ms in chunks:
            k = 0 if stream is LogStream.STDOUT else 1 if stream is LogStream.STDERR else 2
            self._append(k, text, time_ms)
            if self._buf_lines >= FLUSH_LINES or self._buf_bytes >= FLUSH_BYTES:
                self.flush()

    def _append(self, k: int, text: bytes, time_ms: int, never_drop: bool = False) -> None:
        if self.finished:
            return
        seq = self.last_seq + 1
        lines = text.count(b"\n")
        head = b"%d\t%b\t%d\t%d\t%d\n" % (seq, _BCODES[k], time_ms, lines, len(text))
        if not never_drop and (self.dropped_lines or self.disk_error
                               or self.size + len(head) + len(text) > self.max_bytes):
            # Over the limit: the lines that fit stay, every later one goes too, so the
            # log stays a prefix.
            room = self.max_bytes - self.size - len(head)
            keep = 0 if self.dropped_lines or self.disk_error or room <= 0 else text.rfind(b"\n", 0, room) + 1
            self.dropped_lines += text.count(b"\n", keep)
            self.dropped_bytes += len(text) - keep
            if not keep:
                return
            text = text[:keep]
            lines = text.count(b"\n")
            head = b"%d\t%b\t%d\t%d\t%d\n" % (seq, _BCODES[k], time_ms, lines, len(text))
        self._note(seq, k, lines, text, self.size)
        self._buf += (head, text)
        self._buf_meta.append((k, lines))
        self._buf_lines += lines
        self._buf_bytes += len(head) + len(text)
        self.size += len(head) + len(text)

    def system(self, text: str, time_ms: int) -> None:
        """A line of the worker's own (it counts against the limit but is never dropped)."""
        self._append(2, text.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n", time_ms, never_drop=True)

    def flush(self) -> int:
        """Write buffered lines to the file; returns the last readable seq."""
        if self._buf:
            data = memoryview(b"".join(self._buf))
            start = self.size - self._buf_bytes
            try:
                done = 0
                while done < len(data):  # a raw write may be partial on a nearly full disk
                    done += self._w.write(data[done:]) or 0
            except OSError as exc:
                self._lose_buffer(start, exc)
            self._buf.clear()
            self._buf_meta.clear()
            self._buf_lines = self._buf_bytes = 0
        self.flushed_seq = self.last_seq
        return self.flushed_seq

    def _lose_buffer(self, start: int, exc: OSError) -> None:
        """The buffered lines could not be written: cut the file back to the last whole
        record and count them as dropped, so the file stays a gapless prefix."""
        self.disk_error = exc.strerror or str(exc)
        try:
            os.truncate(self.path, start)
        except OSError:
            pass  # the torn tail is cut on the next recovery
        self.dropped_lines += self._buf_lines
        self.dropped_bytes += self._buf_bytes
        for k, lines in self._buf_meta:  # not spooled after all: a resumed read must not skip them
            self._counts[k] -= lines
        self.size = start
        self.last_seq -= self._buf_lines
        while self._index_seq and self._index_seq[-1] > self.last_seq:
            self._index_seq.pop()
            self._index_off.pop()
        while self._recent and self._recent[-1] >= start:
            self._recent.pop()

    @property
    def pending(self) -> int:
        """Lines buffered, not yet written."""
        return self._buf_lines

    def finish(self, time_ms: int) -> None:
        """The container's output has ended: write the drop marker if lines were dropped."""
        if self.finished:
            return
        if self.dropped_lines:
            why = (f"node disk full ({self.disk_error})" if self.disk_error
                   else f"log limit of {_mib(self.max_bytes)} reached")
            self.system(
                f"[hivemind] {why}: dropped {self.dropped_lines} lines "
                f"({self.dropped_bytes} bytes, {_mib(self.dropped_bytes)})",
                time_ms,
            )
            self.finished = True
        self.flush()

    # -- reading --------------------------------------------------------------------
    def read(self, from_seq: int, max_lines: int = FLUSH_LINES, max_bytes: int = 1024 * 1024) -> list[LogChunk]:
        """Lines from ``from_seq`` on (already flushed ones) in chunks, at most max_lines,
        and no more once max_bytes of text are reached (a chunk is cut at a line)."""
        if from_seq > self.flushed_seq or from_seq < 1:
            return []
        i = bisect.bisect_right(self._index_seq, from_seq) - 1
        seq, off = self._index_seq[i], self._index_off[i]
        if seq <= self._cursor[0] <= from_seq:  # sequential reads: from where the last one stopped
            seq, off = self._cursor
        end = self.size - self._buf_bytes
        self._r.seek(off)
        out: list[LogChunk] = []
        lines = size = 0
        for first, k, time_ms, n, text, length in _records(self._r):
            if off >= end or lines >= max_lines or size >= max_bytes:
                break
            if first + n <= from_seq:  # before from_seq: fewer than _INDEX_EVERY lines
                off += length
                continue
            whole = True
            if first < from_seq:  # the read starts inside this chunk
                text = text[_after_lines(text, from_seq - first) :]
                n -= from_seq - first
            if n > max_lines - lines:
                text, n, whole = text[: _after_lines(text, max_lines - lines)], max_lines - lines, False
            if size + len(text) > max_bytes:  # up to the line that reaches max_bytes
                cut = text.find(b"\n", max_bytes - size - 1) + 1
                if cut < len(text):
                    text, n, whole = text[:cut], text.count(b"\n", 0, cut), False
            out.append(LogChunk(max(first, from_seq), _STREAMS[k], text, time_ms, n))
            lines += n
            size += len(text)
            if not whole:
                self._cursor = (first, off)  # the next read starts inside this chunk
                return out
            off += length
        self._cursor = (out[-1].last_seq + 1, off) if out else self._cursor
        return out

    def tail(self, n: int) -> list[LogRecord]:
        """Up to the last n lines (fewer when they are long), read back from the end of
        the file and the write buffer: nothing is kept per line for it."""
        if n <= 0 or not self._recent:
            return []
        start = self._recent[0]
        for off in reversed(self._recent):
            start = off
            if self.size - off >= TAIL_BYTES:
                break
        on_disk = self.size - self._buf_bytes
        block = b""
        if start < on_disk:
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(start)
                    block = fh.read(on_disk - start)
            except FileNotFoundError:  # the task's directory is being removed (delivered): the monitor shows less
                start = on_disk
        buffered = b"".join(self._buf)
        data = io.BytesIO(block + buffered[max(0, start - on_disk) :])
        out: list[LogRecord] = []
        for first, k, time_ms, _, text, _ in _records(data):
            out += LogChunk(first, _STREAMS[k], text, time_ms, 0).records()
            del out[:-n]
        return out

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._w.close()
            self._r.close()
