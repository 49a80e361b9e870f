"""A task's log lines in the dev-master's database: stored once each, in seq order,
within the per-task limits, and the mark up to which all of them are stored (what
the node is acknowledged). Lines are kept as chunks - consecutive lines of one
stream as the bytes the task wrote, one row each (``log_chunks``) - so that a batch
costs a few statements and no Python step per line; readers get lines back from
``logs_after``. Plain values in, plain values out, like ``taskdb``."""

from __future__ import annotations

import heapq
import sqlite3
from dataclasses import dataclass
from typing import Iterable

from hivemind_worker.devmaster.db import Tx

# (first_seq, stream, time_ms, text): lines first_seq.. of one stream, each ending in b"\n".
Chunk = tuple[int, str, int, bytes]

STREAMS = frozenset({"stdout", "stderr", "system"})
# Far past any real log, and first_seq + lines stays inside SQLite's 64-bit integers.
MAX_SEQ = 2**62
_MAX_ACK = 2**64 - 1  # LogAck.seq is a uint64
_INSERT = "INSERT OR IGNORE INTO log_chunks (task_id, first_seq, last_seq, stream, time_ms, text) VALUES (?,?,?,?,?,?)"


@dataclass(frozen=True)
class LogLimits:
    """What one task's log may take in the database (``serve --max-log-...``)."""

    max_lines: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    max_line_bytes: int = 64 * 1024


def line_chunks(lines: Iterable[tuple[int, str, str, int]]) -> list[Chunk]:
    """(seq, stream, text, time_ms) lines - an old node's LogLines - as chunks: one per
    run of consecutive seqs with the same stream and time."""
    runs: list[list] = []  # [first seq, stream, time_ms, texts]
    run: list = [0, None, None, []]
    for seq, stream, text, time_ms in lines:
        if seq == run[0] + len(run[3]) and stream == run[1] and time_ms == run[2]:
            run[3].append(text)
        else:
            run = [seq, stream, time_ms, [text]]
            runs.append(run)
    chunks = []
    for first, stream, time_ms, texts in runs:
        text = "\n".join(texts)
        if text.count("\n") != len(texts) - 1:
            # A "\n" inside a line would split it in two and shift every later seq.
            text = "\n".join(t.replace("\n", "\\n") for t in texts)
        chunks.append((first, stream, time_ms, (text + "\n").encode("utf-8", "replace")))
    return chunks


def last_seq(chunks: Iterable[Chunk]) -> int:
    """The highest seq the chunks carry, as a LogAck can say it (0 = none)."""
    return min(_MAX_ACK, max((c[0] + max(1, c[3].count(b"\n")) - 1 for c in chunks), default=0))


def store_logs(conn: sqlite3.Connection, task_id: str, lines: list[tuple[int, str, str, int]],
               limits: LogLimits = LogLimits()) -> tuple[int, str]:
    """``store_chunks`` for (seq, stream, text, time_ms) lines."""
    return store_chunks(conn, task_id, line_chunks(lines), limits)


def store_chunks(conn: sqlite3.Connection, task_id: str, chunks: list[Chunk],
                 limits: LogLimits = LogLimits()) -> tuple[int, str]:
    """Store the chunks' lines, ignoring those already stored, within ``limits``.
    Returns the highest seq up to which every line is stored or was dropped (0 =
    none), and what a limit or a malformed chunk did to this batch ("" = nothing).
    Past a limit a line is accepted and dropped, never refused: a node would resend
    it forever."""
    notes: list[str] = []
    chunks, dropped = _checked(chunks, notes)
    with Tx(conn):
        row = conn.execute("SELECT log_lines, log_bytes FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        count, total = (row[0], row[1]) if row else (0, 0)
        mark = _mark(conn, task_id)
        chunks.sort(key=lambda c: c[0])
        # Chunks never straddle the mark: those stored past it are whole (a resend of them
        # is skipped line by line).
        stored = [(f, last) for f, last in conn.execute(
            "SELECT first_seq, last_seq FROM log_chunks WHERE task_id=? AND first_seq>? AND first_seq<=?"
            " ORDER BY first_seq", (task_id, mark, max(c[0] + len(c[3]) for c in chunks)))] if chunks else []
        rows = []
        done = mark  # every seq up to here is stored, dropped or taken by an earlier chunk of this batch
        gapless = True  # and every seq from the mark up to ``done`` is: the mark moves there unread
        for first, stream, time_ms, text in chunks:
            n = text.count(b"\n")
            if first + n - 1 <= done:
                continue
            gapless = gapless and first <= done + 1
            if first <= done:  # a resend from before the ack, or an overlap within the batch
                text = text.split(b"\n", done + 1 - first)[-1]
                n, first = n - (done + 1 - first), done + 1
            last, size = first + n - 1, len(text) - n  # a line's size is without its "\n"
            overlap = [(f, s) for f, s in stored if f <= last and s >= first]
            done = max([last] + [s for _, s in overlap])  # a stored chunk may reach past this one
            if count >= limits.max_lines or total >= limits.max_bytes:
                dropped.append((first, last))
            elif (not overlap and count + n < limits.max_lines and total + size < limits.max_bytes
                  and not _long_line(text, n, limits.max_line_bytes)):
                rows.append((task_id, first, last, stream, time_ms, text))  # the usual chunk: whole
                count, total = count + n, total + size
            else:
                count, total = _by_line(task_id, (first, stream, time_ms, text), overlap, count, total, limits,
                                        rows, dropped, notes)
        conn.executemany(_INSERT, rows)
        conn.execute("UPDATE tasks SET log_lines=?, log_bytes=? WHERE task_id=?", (count, total, task_id))
        return _advance_mark(conn, task_id, dropped, done if gapless else mark), "; ".join(notes)


def _checked(chunks: list[Chunk], notes: list[str]) -> tuple[list[Chunk], list[tuple[int, int]]]:
    """The well-formed chunks, and the seq ranges of malformed ones (a buggy or hostile
    node's). A malformed chunk is not stored: one system line at its first seq says
    why, its other seqs are dropped, and it is acknowledged like the lines past a limit
    - a node would resend it forever, and its later lines would never be acknowledged.
    One that cannot be placed (no text, a seq out of range) is only noted: it has no
    seq to acknowledge."""
    good, dropped = [], []
    for chunk in chunks:
        first, stream, time_ms, text = chunk
        if not text or not 1 <= first <= MAX_SEQ - len(text):
            notes.append(f"a chunk from the node with no text or a seq out of range ({first}) dropped")
            continue
        why = (f"an unknown stream ({stream})" if stream not in STREAMS
               else "an unfinished last line" if not text.endswith(b"\n") else "")
        if not why:
            good.append(chunk)
            continue
        n = text.count(b"\n") + (not text.endswith(b"\n"))
        notes.append(f"a malformed chunk from the node ({why}, {n} lines from seq {first}) dropped")
        good.append((first, "system", time_ms, f"[dev-master] {n} line(s) dropped: the node sent them malformed "
                     f"({why})\n".encode()))
        if n > 1:
            dropped.append((first + 1, first + n - 1))
    return good, dropped


def _long_line(text: bytes, n: int, limit: int) -> bool:
    """Whether one of the n lines of ``text`` is longer than ``limit`` (without its "\n").
    Such a line covers one of the positions limit, 2 * limit + 1, ...: looking there
    costs a step per ``limit`` bytes, not per line."""
    if len(text) - n <= limit:
        return False
    probes = range(limit, len(text), limit + 1)
    if len(probes) > n:  # lines far longer than the limit: fewer steps line by line
        return max(map(len, text.split(b"\n"))) > limit
    return any(text[p] != 10 and text.find(b"\n", p) - text.rfind(b"\n", 0, p) - 1 > limit for p in probes)


def _by_line(task_id: str, chunk: Chunk, stored: list[tuple[int, int]], count: int, total: int, limits: LogLimits,
             rows: list, dropped: list, notes: list[str]) -> tuple[int, int]:
    """A chunk line by line (rare: it reaches a limit, has a long line or meets lines
    stored past a gap); adds its rows and dropped seqs, returns the new counters."""
    first, stream, time_ms, text = chunk
    have = set().union(*(range(f, last + 1) for f, last in stored))
    runs: list[list] = []  # [first seq, stream, lines]: consecutive kept lines of one stream are one row
    for seq, line in enumerate(text.split(b"\n")[:-1], first):
        if seq in have:
            continue
        if count >= limits.max_lines or total >= limits.max_bytes:
            dropped.append((seq, seq))
            continue
        size = len(line)
        if size > limits.max_line_bytes:
            line = _cut(line, limits.max_line_bytes) + b" [line cut by the dev-master: %d bytes, limit %d]" % (
                size, limits.max_line_bytes)
            notes.append(f"line {seq} cut to {limits.max_line_bytes} bytes")
            size = limits.max_line_bytes
        kind = stream
        if count + 1 >= limits.max_lines or total + size > limits.max_bytes:
            # The last line stored says why the rest is missing.
            line = (f"[dev-master] log limit reached ({limits.max_lines} lines or {limits.max_bytes} bytes per task, "
                    "`dev-master serve --max-log-lines/--max-log-bytes`): this and later lines are dropped").encode()
            kind, size, total = "system", len(line), limits.max_bytes
            notes.append(f"log limit reached at line {seq}; later lines are dropped")
        if runs and runs[-1][1] == kind and runs[-1][0] + len(runs[-1][2]) == seq:
            runs[-1][2].append(line)
        else:
            runs.append([seq, kind, [line]])
        count, total = count + 1, min(limits.max_bytes, total + size)
    rows.extend((task_id, f, f + len(lines) - 1, kind, time_ms, b"\n".join(lines) + b"\n") for f, kind, lines in runs)
    return count, total


def _cut(line: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes, less a UTF-8 character the cut would split (its
    start alone would read as U+FFFD)."""
    end = limit
    while end > max(0, limit - 3) and line[end] & 0xC0 == 0x80:
        end -= 1
    return line[:end]


def contiguous_seq(conn: sqlite3.Connection, task_id: str) -> int:
    with Tx(conn):
        return _advance_mark(conn, task_id)


def _mark(conn: sqlite3.Connection, task_id: str) -> int:
    row = conn.execute("SELECT seq FROM log_marks WHERE task_id=?", (task_id,)).fetchone()
    return row[0] if row else 0


def _advance_mark(conn: sqlite3.Connection, task_id: str, dropped: Iterable[tuple[int, int]] = (),
                  upto: int = 0) -> int:
    """Move the mark over the chunks stored and the seq ranges dropped right after it;
    ``upto``: every seq up to it is stored or dropped (the caller knows)."""
    mark = _mark(conn, task_id)
    seq = max(mark, upto)
    # Only the chunks after the mark are read, lazily up to the first gap: O(batch).
    stored = ((f, last) for f, last in conn.execute(
        "SELECT first_seq, last_seq FROM log_chunks WHERE task_id=? AND first_seq>? ORDER BY first_seq", (task_id, seq)))
    for first, last in heapq.merge(stored, sorted(dropped)):
        if first > seq + 1:
            break
        seq = max(seq, last)
    if seq != mark:
        conn.execute("INSERT INTO log_marks (task_id, seq) VALUES (?, ?)"
                     " ON CONFLICT(task_id) DO UPDATE SET seq=excluded.seq", (task_id, seq))
    return seq


def logs_after(conn: sqlite3.Connection, task_id: str, seq: int, limit: int = 1000) -> list[dict]:
    """Up to ``limit`` stored lines after ``seq``, in order, as {seq, stream, text (str:
    the bytes decoded as UTF-8, an invalid byte as U+FFFD), time_ms}."""
    start = conn.execute("SELECT MAX(first_seq) FROM log_chunks WHERE task_id=? AND first_seq<=?",
                         (task_id, seq + 1)).fetchone()[0] or 0
    out: list[dict] = []
    cursor = conn.execute("SELECT first_seq, stream, text, time_ms FROM log_chunks WHERE task_id=? AND first_seq>=?"
                          " ORDER BY first_seq", (task_id, start))
    try:
        for first, stream, text, time_ms in cursor:
            # Whole-chunk decoding reads each line as its own would: "\n" is never part
            # of a UTF-8 character.
            lines = text.decode("utf-8", "replace").split("\n")[:-1]
            for n, line in enumerate(lines[max(0, seq + 1 - first):], max(first, seq + 1)):
                out.append({"seq": n, "stream": stream, "text": line, "time_ms": time_ms})
                if len(out) >= limit:
                    return out
        return out
    finally:
        cursor.close()
