"""The dev-master's log store: chunks (and an old node's lines) give what a simple
line-by-line model of the promises gives, over resends, overlaps, duplicates, gaps,
cut lines and limits; malformed chunks; a state.db from before chunks."""

from __future__ import annotations

import random
import sqlite3

import pytest

from hivemind_worker.devmaster import logstore, taskdb
from hivemind_worker.devmaster.db import open_db

WHY_LIMIT = "[dev-master] log limit reached"


def _store(tmp_path, name="state"):
    conn = open_db(tmp_path / f"{name}.db")
    return conn, taskdb.create_task(conn, {}, task_id="task-1")


# ------------------------------------------------------------ the model

def _text(seq: int) -> bytes:
    """A line's bytes are a function of its seq, as a node resends the same line."""
    kind = seq % 23
    if kind == 0:
        return b""
    if kind == 5:
        return f"{seq}:".encode() + "é€😀".encode() * 6  # cut inside a character at 20 bytes
    if kind == 11:
        return f"{seq}:".encode() + b"y" * 40
    return f"{seq}:line".encode()


def _stream(seq: int) -> str:
    return ("stdout", "stderr")[seq // 9 % 2]


def _time(seq: int) -> int:
    return seq // 4 * 10


class Model:
    """The promises, one line at a time: each line stored once (the first copy that
    arrives), in seq order, cut past max_line_bytes, past a limit dropped after one
    system line; the mark is the highest seq up to which every line is stored or was
    dropped (dropped lines are not remembered across batches)."""

    def __init__(self, limits: logstore.LogLimits) -> None:
        self.limits, self.lines, self.count, self.total, self.mark = limits, {}, 0, 0, 0

    def store(self, batch: list[tuple[int, str, int, bytes]]) -> int:
        lim, dropped = self.limits, set()
        for seq, stream, time_ms, line in sorted(batch, key=lambda x: x[0]):
            if seq <= self.mark or seq in self.lines:
                continue
            if self.count >= lim.max_lines or self.total >= lim.max_bytes:
                dropped.add(seq)
                continue
            size = len(line)
            if size > lim.max_line_bytes:
                line = (line[:lim.max_line_bytes].decode("utf-8", "ignore").encode()
                        + f" [line cut by the dev-master: {size} bytes, limit {lim.max_line_bytes}]".encode())
                size = lim.max_line_bytes
            if self.count + 1 >= lim.max_lines or self.total + size > lim.max_bytes:
                stream, line, self.total = "system", WHY_LIMIT.encode(), lim.max_bytes
                size = 0
            self.lines[seq] = (stream, line, time_ms)
            self.count, self.total = self.count + 1, min(lim.max_bytes, self.total + size)
        while self.mark + 1 in self.lines or self.mark + 1 in dropped:
            self.mark += 1
        return self.mark


def _batch(rng: random.Random, mark: int) -> tuple[list, list]:
    """What a node might send: the next lines, a resend from before the ack, lines past a
    gap, a line twice; the first part as LogLines (an old node's), the rest as chunks
    split where the stream or the time changes and at random."""
    start = max(1, mark + 1 + rng.choice([0, 0, 0, -rng.randint(1, 30), rng.randint(1, 20)]))
    seqs = list(range(start, start + rng.choice([rng.randint(1, 40), rng.randint(200, 900)])))
    cut = rng.choice([0, 0, rng.randint(0, len(seqs))])
    lines = [(s, _stream(s), _text(s).decode(), _time(s)) for s in seqs[:cut]]
    chunks, run = [], []
    for s in seqs[cut:]:
        if run and (_stream(s) != _stream(run[0]) or _time(s) != _time(run[0]) or rng.random() < 0.05):
            chunks.append(run)
            run = []
        run.append(s)
    chunks = [(r[0], _stream(r[0]), _time(r[0]), b"".join(_text(s) + b"\n" for s in r)) for r in chunks + [run] if r]
    if chunks and rng.random() < 0.2:
        chunks.append(rng.choice(chunks))  # the same chunk twice in one batch
    return lines, chunks


def _expanded(lines: list, chunks: list) -> list:
    out = [(s, stream, t, text.encode()) for s, stream, text, t in lines]
    for first, stream, t, text in chunks:
        out += [(first + i, stream, t, line) for i, line in enumerate(text.split(b"\n")[:-1])]
    return out


def _rows(conn: sqlite3.Connection, task_id: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(
        "SELECT first_seq, last_seq, stream, time_ms, text FROM log_chunks WHERE task_id=? ORDER BY first_seq",
        (task_id,))]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("limits", [logstore.LogLimits(), logstore.LogLimits(max_lines=2500, max_bytes=30_000,
                                                                             max_line_bytes=20)], ids=["far", "near"])
def test_chunks_and_lines_store_what_the_model_stores(tmp_path, seed, limits):
    conn, task_id = _store(tmp_path)
    rng, model = random.Random(seed), Model(limits)
    for _ in range(50):
        lines, chunks = _batch(rng, model.mark)
        mark, _ = logstore.store_chunks(conn, task_id, logstore.line_chunks(lines) + chunks, limits)
        assert mark == model.store(_expanded(lines, chunks))
    # The same lines, in order, once each; chunks that never overlap, each line ending in "\n".
    got = logstore.logs_after(conn, task_id, 0, limit=10**6)
    want = sorted(model.lines.items())
    assert [(r["seq"], r["stream"], r["time_ms"]) for r in got] == [(s, v[0], v[2]) for s, v in want]
    for r, (seq, (stream, line, _)) in zip(got, want):
        assert r["text"] == line.decode() or (stream == "system" and r["text"].startswith(WHY_LIMIT)), seq
    rows = _rows(conn, task_id)
    assert all(last - first + 1 == text.count(b"\n") and text.endswith(b"\n") for first, last, _, _, text in rows)
    assert all(a[1] < b[0] for a, b in zip(rows, rows[1:]))
    assert tuple(conn.execute("SELECT log_lines, log_bytes FROM tasks").fetchone()) == (model.count, model.total)
    # Any seq to read after, any page size.
    for after, limit in ((0, 7), (rng.randint(0, model.mark), 50), (model.mark, 1000)):
        assert [r["seq"] for r in logstore.logs_after(conn, task_id, after, limit)] == [
            s for s in sorted(model.lines) if s > after][:limit]


def test_a_chunk_is_one_row_and_a_resend_is_trimmed(tmp_path):
    conn, task_id = _store(tmp_path)
    text = b"".join(b"line %d\n" % i for i in range(1, 1001))
    assert logstore.store_chunks(conn, task_id, [(1, "stdout", 5, text)]) == (1000, "")
    # A resend from before the ack overlaps what is stored: only its new lines are stored.
    more = text[text.index(b"line 991\n"):] + b"line 1001\n"
    assert logstore.store_chunks(conn, task_id, [(991, "stdout", 6, more)]) == (1001, "")
    assert [r[:2] for r in _rows(conn, task_id)] == [(1, 1000), (1001, 1001)]
    assert logstore.logs_after(conn, task_id, 999, limit=5) == [
        {"seq": 1000, "stream": "stdout", "text": "line 1000", "time_ms": 5},
        {"seq": 1001, "stream": "stdout", "text": "line 1001", "time_ms": 6}]


def test_bytes_as_written_are_read_back_as_text(tmp_path):
    conn, task_id = _store(tmp_path)
    text = b"ok \xc3\xa9\n\xff\xfe bad\n\xe2\x82\n"  # valid, invalid, a character cut short
    assert logstore.store_chunks(conn, task_id, [(1, "stderr", 0, text)]) == (3, "")
    assert _rows(conn, task_id)[0][4] == text
    assert [r["text"] for r in logstore.logs_after(conn, task_id, 0)] == ["ok é", "\ufffd\ufffd bad", "\ufffd"]


def test_long_lines_are_cut_in_a_chunk_and_the_limit_says_why(tmp_path):
    conn, task_id = _store(tmp_path)
    limits = logstore.LogLimits(max_lines=6, max_bytes=10_000, max_line_bytes=100)
    text = b"a\n" + b"b" * 300 + b"\n" + b"c\n" * 10
    mark, note = logstore.store_chunks(conn, task_id, [(1, "stdout", 0, text)], limits)
    assert mark == 12 and "line 2 cut to 100 bytes" in note and "log limit reached at line 6" in note
    rows = logstore.logs_after(conn, task_id, 0)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[1]["text"] == "b" * 100 + " [line cut by the dev-master: 300 bytes, limit 100]"
    assert rows[-1]["stream"] == "system" and "--max-log-lines/--max-log-bytes" in rows[-1]["text"]
    # Later chunks are accepted and dropped, whole.
    assert logstore.store_chunks(conn, task_id, [(13, "stdout", 0, b"d\n" * 500)], limits) == (512, "")
    assert len(logstore.logs_after(conn, task_id, 0)) == 6


@pytest.mark.parametrize("limit", [1, 7, 100, 4096])
def test_the_long_line_probe_finds_every_long_line(limit):
    rng = random.Random(limit)
    for _ in range(300):
        lines = [b"x" * rng.choice([0, 1, limit - 1, limit, limit + 1, rng.randint(0, 3 * limit)])
                 for _ in range(rng.randint(1, 30))]
        text = b"".join(line + b"\n" for line in lines)
        assert logstore._long_line(text, len(lines), limit) == (max(map(len, lines)) > limit)


def test_malformed_chunks_are_acknowledged_and_dropped_and_say_so(tmp_path):
    conn, task_id = _store(tmp_path)
    mark, note = logstore.store_chunks(conn, task_id, [
        (1, "stdout", 0, b"one\n"),
        (2, "unspecified", 0, b"two\nthree\n"),  # a stream the node may not use
        (4, "stdout", 0, b"four\nfive"),  # the last line unfinished
        (6, "stdout", 0, b""),  # no lines: nothing to place
        (0, "stdout", 0, b"zero\n"),  # seqs start at 1
        (2**64 - 1, "stdout", 0, b"far\n"),  # past what SQLite holds
        (6, "stdout", 0, b"six\n"),
    ])
    assert mark == 6
    assert note.count("malformed chunk") == 2 and note.count("no text or a seq out of range") == 3
    rows = logstore.logs_after(conn, task_id, 0)
    assert [(r["seq"], r["stream"]) for r in rows] == [(1, "stdout"), (2, "system"), (4, "system"), (6, "stdout")]
    assert rows[1]["text"] == "[dev-master] 2 line(s) dropped: the node sent them malformed (an unknown stream (unspecified))"
    # An old node's line with a newline in it stays one line.
    assert logstore.store_logs(conn, task_id, [(7, "stdout", "a\nb", 0)]) == (7, "")
    assert logstore.logs_after(conn, task_id, 6)[0]["text"] == "a\\nb"
    assert logstore.last_seq([(2**64 - 1, "stdout", 0, b"a\nb\n")]) == 2**64 - 1


OLD_LOGS = """CREATE TABLE logs (task_id TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
    text TEXT NOT NULL, time_ms INTEGER, PRIMARY KEY (task_id, seq)) WITHOUT ROWID"""


def test_a_state_db_from_before_chunks_is_migrated_once(tmp_path):
    path = tmp_path / "state.db"
    conn = open_db(path)
    task_id = taskdb.create_task(conn, {}, task_id="task-1")
    conn.execute("DROP TABLE log_chunks")
    conn.execute(OLD_LOGS)
    conn.executemany("INSERT INTO logs VALUES (?,?,?,?,?)", [
        (task_id, 1, "stdout", "one é", 10), (task_id, 2, "stderr", "two\nlines", 11), (task_id, 4, "system", "", 12)])
    conn.execute("INSERT INTO log_marks VALUES (?, 2)", (task_id,))
    conn.close()
    conn = open_db(path)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name='logs'").fetchone() is None
    assert [(r["seq"], r["stream"], r["text"], r["time_ms"]) for r in logstore.logs_after(conn, task_id, 0)] == [
        (1, "stdout", "one é", 10), (2, "stderr", "two\\nlines", 11), (4, "system", "", 12)]
    # The log goes on: the gap filled, the mark moves over the migrated line 4.
    assert logstore.store_logs(conn, task_id, [(3, "stdout", "three", 13)]) == (4, "")
    assert logstore.store_chunks(conn, task_id, [(4, "stdout", 0, b"four\nfive\n")]) == (5, "")
    assert [r["seq"] for r in logstore.logs_after(conn, task_id, 0)] == [1, 2, 3, 4, 5]
    open_db(path).close()  # a second opener finds nothing to do
    conn.close()
