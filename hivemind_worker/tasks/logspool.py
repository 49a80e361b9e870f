"""A task's log lines on disk: sequence-numbered, bounded, readable back from any seq.

One append-only file per task, one record per line:
``<seq>\\t<o|e|s>\\t<time_ms>\\t<text>\\n``. Sequence numbers start at 1 and have no
gaps. The file is the spool the sender re-reads after a reconnect (lines the master
has not acknowledged are sent again with the same seqs) and, once the task ended, the
``logs`` file of its result archive.

Bounded: once the file would pass ``max_bytes`` every further line is dropped (the
log stays a contiguous prefix) and ``finish()`` appends ONE system line saying how
many lines and bytes were dropped. A full disk (ENOSPC) is treated the same way: the
lines that could not be written are dropped (the file is cut back to its last whole
record, so it stays a gapless prefix), ``disk_error`` says why (the runner then stops
the task) and the marker line is written once there is room again. Memory stays flat whatever the task prints: a
small write buffer, a sparse seq -> offset index and the last few lines for the
monitor.

Recovery: ``LogSpool(path, ...)`` on an existing file re-reads it, cuts a torn last
record (the agent was killed mid-write) and restores the position, so the log pump
can resume from the container's logs without a duplicate: ``counts()`` says how many
lines of each stream the spool holds (the pump skips as many), ``last_text()`` the
last one of each (to check that the skip lined up). ``carry`` holds, in memory only,
what an interrupted read had of an unfinished line (see logpump.pump).

This module does file I/O only (buffered writes to the page cache, one write per
FLUSH_LINES/FLUSH_BYTES, done on the event loop on purpose: they cost microseconds
and keep lines strictly ordered); it knows nothing about Docker or the master.
Per line it keeps no object beyond the record's bytes until the write: the pump
feeds it at the engine's rate.
"""

from __future__ import annotations

import bisect
import itertools
import os
from pathlib import Path

from hivemind_worker.tasks.model import LogRecord, LogStream

_CODE = {LogStream.STDOUT: "o", LogStream.STDERR: "e", LogStream.SYSTEM: "s"}
_STREAM = {v: k for k, v in _CODE.items()}
_STREAMS = (LogStream.STDOUT, LogStream.STDERR, LogStream.SYSTEM)
_BCODES = (b"o", b"e", b"s")  # per index in _STREAMS; per-line state is indexed, not keyed by
# the enum: an Enum's __hash__ is Python code, a call per line per lookup.
_BCODE_OF = {id(stream): code for stream, code in zip(_STREAMS, _BCODES)}
_BSTREAM = {v.encode(): k for k, v in _CODE.items()}
_INDEX_EVERY = 256  # one offset per this many lines: ~100 KB of index per million lines
FLUSH_LINES = 2000
FLUSH_BYTES = 256 * 1024
TAIL_BYTES = 256 * 1024  # read back for tail(): the monitor's last lines


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def parse_record(raw: bytes) -> LogRecord:
    seq, code, time_ms, text = raw.rstrip(b"\n").split(b"\t", 3)
    return LogRecord(int(seq), _STREAM[code.decode()], text.decode("utf-8", "replace"), int(time_ms))


def render_text(spool_path: Path, dest: Path) -> None:
    """The spool as a plain log file (one line per record, text only) for the result
    archive, a block at a time. Blocking: run it in a thread."""
    with open(spool_path, "rb") as src, open(dest, "wb") as out:
        rest = b""
        while block := src.read(1024 * 1024):
            records = (rest + block).split(b"\n")
            rest = records.pop()
            out.write(b"".join([r.split(b"\t", 3)[-1] + b"\n" for r in records if r.count(b"\t", 0, 64) >= 3]))
        if rest.count(b"\t") >= 3:
            out.write(rest.split(b"\t", 3)[3] + b"\n")


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
        self._last: list[str | None] = [None, None, None]  # the last one, per stream
        self.carry: dict[LogStream, str] = {}  # an interrupted read's unfinished line
        self._index_seq: list[int] = []
        self._index_off: list[int] = []
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self._cursor = (0, 0)  # (next seq, its offset) for sequential reads
        path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._w = open(path, "ab", buffering=0)
        self._r = open(path, "rb")

    # -- recovery -------------------------------------------------------------------
    def _recover(self) -> None:
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn record: the agent died mid-write; cut it
                try:
                    rec = parse_record(raw)
                except (ValueError, KeyError):
                    break
                if rec.seq != self.last_seq + 1:
                    break
                self._note(rec, good)
                good += len(raw)
        if good != self.path.stat().st_size:
            os.truncate(self.path, good)
        self.size = good
        self.flushed_seq = self.last_seq

    def _note(self, rec: LogRecord, offset: int) -> None:
        self.last_seq = rec.seq
        if (rec.seq - 1) % _INDEX_EVERY == 0:
            self._index_seq.append(rec.seq)
            self._index_off.append(offset)
        if rec.stream is LogStream.SYSTEM and rec.text.startswith(("[hivemind] log limit", "[hivemind] node disk full")):
            self.finished = True
        k = _STREAMS.index(rec.stream)
        self._counts[k] += 1
        self._last[k] = rec.text

    def counts(self) -> dict[LogStream, int]:
        """How many lines of the container's stdout and stderr the spool holds."""
        return {LogStream.STDOUT: self._counts[0], LogStream.STDERR: self._counts[1]}

    def last_text(self, stream: LogStream) -> str | None:
        return self._last[_STREAMS.index(stream)]

    # -- writing --------------------------------------------------------------------
    def add(self, stream: LogStream, text: str, time_ms: int) -> None:
        if self.finished:
            return
        data = text.encode("utf-8", "replace")
        if self.dropped_lines or self.disk_error or self.size + len(data) + 32 > self.max_bytes:
            # Once over the limit every later line goes too, so the log stays a prefix.
            self.dropped_lines += 1
            self.dropped_bytes += len(data) + 1
            return
        self._append(stream, text, data, time_ms)
        if len(self._buf) >= FLUSH_LINES or self._buf_bytes >= FLUSH_BYTES:
            self.flush()

    def add_many(self, lines: list[tuple[LogStream, str, int]]) -> None:
        """add() of a batch (stream, text, time_ms), formatted in one pass."""
        datas = [text.encode("utf-8", "replace") for _, text, _ in lines]
        if (self.finished or self.dropped_lines or self.disk_error
                or self.size + sum(map(len, datas)) + 32 * len(lines) > self.max_bytes):
            for line in lines:  # the limit falls in this batch (or was passed): line by line
                self.add(*line)
            return
        start = self.last_seq + 1
        ids = [id(stream) for stream, _, _ in lines]
        raws = [b"%d\t%b\t%d\t%b\n" % (seq, _BCODE_OF[i], line[2], data.replace(b"\n", b" ") if b"\n" in data else data)
                for seq, i, line, data in zip(itertools.count(start), ids, lines, datas)]
        offsets = list(itertools.accumulate(map(len, raws), initial=self.size))
        for i in range((1 - start) % _INDEX_EVERY, len(raws), _INDEX_EVERY):
            self._index_seq.append(start + i)
            self._index_off.append(offsets[i])
        for k, stream in enumerate(_STREAMS):
            n = ids.count(id(stream))
            if n:
                self._counts[k] += n
                self._last[k] = lines[len(ids) - 1 - ids[::-1].index(id(stream))][1]
        self.last_seq = start + len(raws) - 1
        self._buf.extend(raws)
        self._buf_bytes += offsets[-1] - self.size
        self.size = offsets[-1]
        if len(self._buf) >= FLUSH_LINES or self._buf_bytes >= FLUSH_BYTES:
            self.flush()

    def _append(self, stream: LogStream, text: str, data: bytes, time_ms: int) -> None:
        # Called per line at the engine's rate: attribute reads and objects kept few.
        seq = self.last_seq = self.last_seq + 1
        if b"\n" in data:
            data = data.replace(b"\n", b" ")
        k = 0 if stream is LogStream.STDOUT else 1 if stream is LogStream.STDERR else 2
        raw = b"%d\t%b\t%d\t%b\n" % (seq, _BCODES[k], time_ms, data)
        size = self.size
        if not (seq - 1) % _INDEX_EVERY:
            self._index_seq.append(seq)
            self._index_off.append(size)
        self._counts[k] += 1
        self._last[k] = text
        self._buf.append(raw)
        self._buf_bytes += len(raw)
        self.size = size + len(raw)

    def system(self, text: str, time_ms: int) -> None:
        """A line of the worker's own (it counts against the limit but is never dropped)."""
        if not self.finished:
            self._append(LogStream.SYSTEM, text, text.encode(), time_ms)

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
            self._buf_bytes = 0
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
        self.dropped_lines += len(self._buf)
        self.dropped_bytes += self._buf_bytes
        for raw in self._buf:  # not spooled after all: a resumed read must not skip them
            self._counts[_BCODES.index(raw.split(b"\t", 2)[1])] -= 1
        self.size = start
        self.last_seq -= len(self._buf)
        while self._index_seq and self._index_seq[-1] > self.last_seq:
            self._index_seq.pop()
            self._index_off.pop()

    @property
    def pending(self) -> int:
        return len(self._buf)

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
    def read(self, from_seq: int, max_lines: int = FLUSH_LINES, max_bytes: int = 1024 * 1024) -> list[LogRecord]:
        """Records from ``from_seq`` on (already flushed ones), at most max_lines, and
        no more once max_bytes are reached. Reads in blocks, not a line at a time."""
        if from_seq > self.flushed_seq or from_seq < 1:
            return []
        seq, off = self._cursor
        if seq != from_seq:
            i = bisect.bisect_right(self._index_seq, from_seq) - 1
            seq, off = self._index_seq[i], self._index_off[i]
        self._r.seek(off)
        while seq < from_seq:  # from the index entry on: fewer than _INDEX_EVERY records
            off += len(self._r.readline())
            seq += 1
        out: list[LogRecord] = []
        want = min(max_lines, self.flushed_seq - seq + 1)
        size, rest = 0, b""
        while len(out) < want and size < max_bytes:
            block = self._r.read(max(64 * 1024, max_bytes - size + 4096))
            if not block:
                break
            raws = (rest + block).split(b"\n")
            rest = raws.pop()  # an unfinished record: the next block finishes it
            for raw in raws:
                if len(out) >= want or size >= max_bytes:
                    break
                _, code, time_ms, text = raw.split(b"\t", 3)
                out.append(LogRecord(seq, _BSTREAM[code], text.decode("utf-8", "replace"), int(time_ms)))
                size += len(raw) + 1
                seq += 1
        self._cursor = (seq, off + size)
        return out

    def tail(self, n: int) -> list[LogRecord]:
        """Up to the last n records (fewer when they are long), read back from the end of
        the file and the write buffer: nothing is kept per line for it."""
        if n <= 0:
            return []
        raws = self._buf[-n:]
        on_disk = self.size - self._buf_bytes
        if len(raws) < n and on_disk > 0:
            start = max(0, on_disk - TAIL_BYTES)
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(start)
                    block = fh.read(on_disk - start)
            except FileNotFoundError:  # the task's directory is being removed (delivered): the monitor shows less
                block = b""
            older = block.split(b"\n")[:-1]
            if start > 0:
                older = older[1:]  # the first one is cut
            raws = older[-(n - len(raws)):] + raws
        return [parse_record(raw) for raw in raws]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._w.close()
            self._r.close()
