"""A task's log lines in the dev-master's database: stored once each, in seq order,
within the per-task limits, and the mark up to which all of them are stored (what
the node is acknowledged). Plain values in, plain values out, like ``taskdb``."""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from dataclasses import dataclass
from typing import AbstractSet

from hivemind_worker.devmaster.db import Tx

_INSERT_ONE = "INSERT INTO logs (task_id, seq, stream, text, time_ms) VALUES (?,?,?,?,?)"
_ROWS_PER_INSERT = 200
_INSERT_MANY = _INSERT_ONE + ",(?,?,?,?,?)" * (_ROWS_PER_INSERT - 1)


@dataclass(frozen=True)
class LogLimits:
    """What one task's log may take in the database (``serve --max-log-...``)."""

    max_lines: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    max_line_bytes: int = 64 * 1024


def store_logs(conn: sqlite3.Connection, task_id: str, lines: list[tuple[int, str, str, int]],
               limits: LogLimits = LogLimits()) -> tuple[int, str]:
    """Store (seq, stream, text, time_ms) lines, ignoring duplicates, within ``limits``.
    Returns the highest seq up to which every line is stored or was dropped by a
    limit (0 = none), and what a limit did to this batch ("" = nothing). Past a limit
    a line is accepted and dropped, never refused: a node would resend it forever."""
    notes: list[str] = []
    with Tx(conn):
        row = conn.execute("SELECT log_lines, log_bytes FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        count, total = (row[0], row[1]) if row else (0, 0)
        mark = _mark(conn, task_id)
        if _store_next(conn, task_id, lines, mark, count, total, limits):
            return mark + len(lines), ""
        lines = sorted(line for line in lines if line[0] > mark)
        # Lines stored before past a gap (a resend): skipped here, in one query.
        have = {s for (s,) in conn.execute("SELECT seq FROM logs WHERE task_id=? AND seq BETWEEN ? AND ?",
                                           (task_id, lines[0][0], lines[-1][0]))} if lines else set()
        dropped: set[int] = set()
        rows = []
        for seq, stream, text, time_ms in lines:
            if seq in have:
                continue
            size = len(text.encode())
            if size > limits.max_line_bytes:
                text = (text.encode()[:limits.max_line_bytes].decode(errors="ignore")
                        + f" [line cut by the dev-master: {size} bytes, limit {limits.max_line_bytes}]")
                notes.append(f"line {seq} cut to {limits.max_line_bytes} bytes")
                size = limits.max_line_bytes
            if count >= limits.max_lines or total >= limits.max_bytes:
                dropped.add(seq)
                continue
            if count + 1 >= limits.max_lines or total + size > limits.max_bytes:
                # The last line stored says why the rest is missing.
                why = (f"[dev-master] log limit reached ({limits.max_lines} lines or {limits.max_bytes} bytes per "
                       "task, `dev-master serve --max-log-lines/--max-log-bytes`): this and later lines are dropped")
                stream, text, size, total = "system", why, len(why), limits.max_bytes
                notes.append(f"log limit reached at line {seq}; later lines are dropped")
            rows.append((task_id, seq, stream, text, time_ms))
            have.add(seq)  # a seq twice in one batch: stored once
            count, total = count + 1, min(limits.max_bytes, total + size)
        # One statement for the batch: a line's INSERT costs more than its checks.
        conn.executemany("INSERT OR IGNORE INTO logs (task_id, seq, stream, text, time_ms) VALUES (?,?,?,?,?)", rows)
        conn.execute("UPDATE tasks SET log_lines=?, log_bytes=? WHERE task_id=?", (count, total, task_id))
        handled = sorted(have | dropped)
        # The batch continues the stored prefix without a hole: the mark moves to its end
        # without reading the batch back.
        upto = handled[-1] if handled and handled[0] == mark + 1 and handled[-1] - mark == len(handled) else 0
        return _advance_mark(conn, task_id, dropped, upto), "; ".join(notes)


def _store_next(conn: sqlite3.Connection, task_id: str, lines: list[tuple[int, str, str, int]], mark: int,
                count: int, total: int, limits: LogLimits) -> bool:
    """The usual batch (the lines right after the mark, in order, none stored yet, far
    from every limit) in a few statements without per-line Python: what the loop would do."""
    n = len(lines)
    if not n or lines[0][0] != mark + 1 or lines[-1][0] != mark + n or count + n >= limits.max_lines:
        return False
    seqs, streams, texts, times = zip(*lines)
    sizes = list(map(len, map(str.encode, texts)))
    size = sum(sizes)
    if (seqs != tuple(range(mark + 1, mark + n + 1)) or total + size >= limits.max_bytes
            or max(sizes) > limits.max_line_bytes
            or conn.execute("SELECT 1 FROM logs WHERE task_id=? AND seq>? LIMIT 1", (task_id, mark)).fetchone()):
        return False
    # Many rows per statement: half the CPU of one row per step (executemany).
    params = list(itertools.chain.from_iterable(zip(itertools.repeat(task_id), seqs, streams, texts, times)))
    whole = n - n % _ROWS_PER_INSERT
    for i in range(0, whole * 5, _ROWS_PER_INSERT * 5):
        conn.execute(_INSERT_MANY, params[i:i + _ROWS_PER_INSERT * 5])
    conn.executemany(_INSERT_ONE, zip(*[iter(params[whole * 5:])] * 5))
    conn.execute("UPDATE tasks SET log_lines=?, log_bytes=? WHERE task_id=?", (count + n, total + size, task_id))
    conn.execute("INSERT INTO log_marks (task_id, seq) VALUES (?, ?)"
                 " ON CONFLICT(task_id) DO UPDATE SET seq=excluded.seq", (task_id, mark + n))
    return True


def contiguous_seq(conn: sqlite3.Connection, task_id: str) -> int:
    with Tx(conn):
        return _advance_mark(conn, task_id)


def _mark(conn: sqlite3.Connection, task_id: str) -> int:
    row = conn.execute("SELECT seq FROM log_marks WHERE task_id=?", (task_id,)).fetchone()
    return row[0] if row else 0


def _advance_mark(conn: sqlite3.Connection, task_id: str, dropped: AbstractSet[int] = frozenset(),
                  upto: int = 0) -> int:
    """``upto``: every seq up to it is stored or dropped (the caller knows)."""
    mark = _mark(conn, task_id)
    seq = max(mark, upto)
    # Only the lines after the mark are read, lazily up to the first gap: O(batch).
    stored = (s for (s,) in conn.execute("SELECT seq FROM logs WHERE task_id=? AND seq>? ORDER BY seq",
                                          (task_id, seq)))
    for s in heapq.merge(stored, sorted(d for d in dropped if d > seq)):
        if s == seq:  # a line stored earlier past a gap, resent and dropped now
            continue
        if s != seq + 1:
            break
        seq = s
    if seq != mark:
        conn.execute("INSERT INTO log_marks (task_id, seq) VALUES (?, ?)"
                     " ON CONFLICT(task_id) DO UPDATE SET seq=excluded.seq", (task_id, seq))
    return seq


def logs_after(conn: sqlite3.Connection, task_id: str, seq: int, limit: int = 1000) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT seq, stream, text, time_ms FROM logs WHERE task_id=? AND seq>? ORDER BY seq LIMIT ?",
        (task_id, seq, limit),
    ).fetchall()
