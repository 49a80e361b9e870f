"""The spool's chunks: a record per chunk of lines, read back from any seq (a chunk
split where a read starts or stops), the limit falling inside a chunk, raw bytes
kept as the task wrote them, an index that stays sparse."""

from __future__ import annotations

import random
from pathlib import Path

from hivemind_worker.tasks.logspool import LogSpool, render_text
from hivemind_worker.tasks.model import LogStream
from tests.unit.tasks.fakes import records

OUT, ERR = LogStream.STDOUT, LogStream.STDERR


def random_chunks(rng: random.Random, n: int) -> list[tuple[LogStream, bytes, int]]:
    chunks = []
    for i in range(n):
        lines = [b"c%d l%d " % (i, j) + b"x" * rng.randrange(0, 200) for j in range(rng.randrange(1, 60))]
        chunks.append((rng.choice([OUT, ERR]), b"\n".join(lines) + b"\n", 1000 + i))
    return chunks


def test_reads_from_any_seq_in_any_window_give_every_line_once(tmp_path: Path) -> None:
    rng = random.Random(5)
    chunks = random_chunks(rng, 300)
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    for i in range(0, len(chunks), 7):
        spool.add_many(chunks[i : i + 7])
    spool.flush()
    want = [(stream, line) for stream, text, _ in chunks for line in text.split(b"\n")[:-1]]
    assert spool.last_seq == len(want) and spool.counts()[OUT] == sum(s is OUT for s, _ in want)
    for _ in range(200):  # a read from the middle of a chunk splits it there
        seq = rng.randrange(1, len(want) + 1)
        got = spool.read(seq, max_lines=rng.randrange(1, 500), max_bytes=rng.randrange(1, 30_000))
        assert got and got[0].first_seq == seq
        lines = [(c.stream, line) for c in got for line in c.text.split(b"\n")[:-1]]
        assert lines == want[seq - 1 : seq - 1 + len(lines)]
        assert all(c.lines == c.text.count(b"\n") for c in got)
    # Sequential reads (the sender's, from the cursor) cut by lines and bytes: every line once.
    got, seq = [], 1
    while seq <= spool.flushed_seq:
        batch = spool.read(seq, max_lines=rng.randrange(1, 300), max_bytes=rng.randrange(1, 20_000))
        assert batch[0].first_seq == seq and all(a.last_seq + 1 == b.first_seq for a, b in zip(batch, batch[1:]))
        got += [(c.stream, line) for c in batch for line in c.text.split(b"\n")[:-1]]
        seq = batch[-1].last_seq + 1
    assert got == want
    spool.close()
    again = LogSpool(tmp_path / "s", max_bytes=10**9)  # recovered: the same lines, counts and last lines
    assert again.last_seq == len(want) and again.counts() == spool.counts()
    assert again.last_text(ERR) == [line for s, line in want if s is ERR][-1]
    assert [(r.stream, r.text.encode()) for r in records(again.read(1, 10**6, 10**9))] == want
    again.close()


def test_the_limit_cuts_a_chunk_at_a_line_and_drops_the_rest(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=1000)
    chunk = b"".join(b"line %03d\n" % i for i in range(300))  # 2700 bytes: the limit falls inside
    spool.add_many([(OUT, chunk, 5), (ERR, b"later\n", 6)])
    spool.add(OUT, "after", 7)
    spool.finish(8)
    recs = records(spool.read(1, 10**6, 10**9))
    kept = len(recs) - 1
    assert 50 < kept < 111 and [r.text for r in recs[:kept]] == [f"line {i:03d}" for i in range(kept)]
    assert recs[-1].stream is LogStream.SYSTEM
    assert f"dropped {300 - kept + 2} lines ({2700 - 9 * kept + 6 + 6} bytes" in recs[-1].text
    assert (tmp_path / "s").stat().st_size < 1000 + 200
    spool.close()


def test_raw_bytes_stay_raw_and_decode_with_replace(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    text = b"caf\xc3\xa9\n\xff\xfe bad\nkeeps a \r inside\n"
    spool.add_many([(OUT, text, 1)])
    spool.flush()
    (chunk,) = spool.read(1)
    assert chunk.text == text and chunk.lines == 3
    assert [r.text for r in chunk.records()] == ["caf\u00e9", "\ufffd\ufffd bad", "keeps a \r inside"]
    assert [r.text for r in spool.tail(2)] == ["\ufffd\ufffd bad", "keeps a \r inside"]
    spool.system("done", 2)
    spool.close()
    render_text(tmp_path / "s", tmp_path / "logs.txt")
    assert (tmp_path / "logs.txt").read_bytes() == text + b"done\n"


def test_the_index_stays_sparse_whatever_the_chunks(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    for i in range(20_000):  # a line a second for hours: a chunk per line
        spool.add_many([(OUT, b"tick %d\n" % i, i)])
    spool.add_many([(ERR, b"x\n" * 50_000, 1)])  # and one big chunk
    spool.flush()
    assert len(spool._index_seq) <= 20_000 // 256 + 2
    assert [r.text for r in records(spool.read(12_345, 2))] == ["tick 12344", "tick 12345"]
    assert [r.text for r in spool.tail(3)] == ["x", "x", "x"] and spool.tail(3)[-1].seq == 70_000
    spool.close()


def test_tail_spans_records_on_disk_and_in_the_buffer(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    spool.add_many([(OUT, b"a\nb\n", 1), (ERR, b"c\n", 2)])
    spool.flush()
    spool.add_many([(OUT, b"d\ne\n", 3)])
    assert spool.pending == 2
    assert [(r.seq, r.stream, r.text) for r in spool.tail(4)] == [(2, OUT, "b"), (3, ERR, "c"), (4, OUT, "d"),
                                                                   (5, OUT, "e")]
    spool.close()


def test_a_spool_of_the_agent_before_chunks_is_taken_over(tmp_path: Path) -> None:
    """An upgrade hands a running task to this agent: its per-line spool is rewritten
    as chunks and resumed by count (a torn last line cut, as ever)."""
    old = b"1\to\t5\tone\n2\to\t5\ttwo\tand a tab\n3\te\t5\toops\n4\to\t6\tfour\n5\to\t6\tfi"
    (tmp_path / "s").write_bytes(old)
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    assert spool.last_seq == 4 and spool.counts() == {OUT: 3, ERR: 1} and spool.last_text(OUT) == b"four"
    spool.add(OUT, "five", 7)
    spool.flush()
    assert [(r.seq, r.stream, r.text, r.time_ms) for r in records(spool.read(1, 100))] == [
        (1, OUT, "one", 5), (2, OUT, "two\tand a tab", 5), (3, ERR, "oops", 5), (4, OUT, "four", 6),
        (5, OUT, "five", 7)]
    spool.close()
    (tmp_path / "t").write_bytes(b"1\to\t5\t2\t10\nline 1\nli")  # this agent's first chunk, torn: not an old line
    spool = LogSpool(tmp_path / "t", max_bytes=10**9)
    assert spool.last_seq == 0 and (tmp_path / "t").stat().st_size == 0
    spool.close()
