"""The log spool: contiguous seqs, bounded size with one marker, recovery after a kill."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.tasks.logspool import LogSpool
from hivemind_worker.tasks.model import LogStream
from tests.support.wait import until
from tests.unit.tasks.fakes import records

OUT = LogStream.STDOUT


def test_seqs_from_one_without_gaps_and_read_back(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    for i in range(2000):
        spool.add(OUT if i % 2 else LogStream.STDERR, f"line {i}\twith tab", 1000 + i // 7)
    spool.flush()
    recs = records(spool.read(1, max_lines=5000))
    assert [r.seq for r in recs] == list(range(1, 2001))
    assert recs[3].text == "line 3\twith tab" and recs[3].stream is OUT
    # read from the middle (index lookup) and in pieces (cursor)
    assert [r.seq for r in records(spool.read(777, max_lines=3))] == [777, 778, 779]
    assert records(spool.read(780, max_lines=1))[0].text == "line 779\twith tab"
    assert spool.read(2001) == []
    spool.close()


def test_unflushed_lines_are_not_readable_yet(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    spool.add(OUT, "a", 1)
    assert spool.read(1) == [] and spool.pending == 1
    spool.flush()
    assert [r.text for r in records(spool.read(1))] == ["a"]
    spool.close()


def test_limit_drops_the_rest_with_one_marker_and_flat_size(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", max_bytes=10_000)
    for i in range(100_000):
        spool.add(OUT, f"line {i:08d} " + "x" * 40, 5)
    spool.finish(9)
    size = (tmp_path / "s").stat().st_size
    assert size < 10_000 + 200
    recs = records(spool.read(1, max_lines=10**6))
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    markers = [r for r in recs if r.stream is LogStream.SYSTEM]
    assert len(markers) == 1 and markers[0] is recs[-1]
    kept = len(recs) - 1
    assert f"dropped {100_000 - kept} lines" in markers[0].text
    # the kept lines are the first ones: a prefix, no holes
    assert recs[kept - 1].text.startswith(f"line {kept - 1:08d}")
    spool.finish(10)  # idempotent: still one marker
    spool.close()
    again = LogSpool(tmp_path / "s", max_bytes=10_000)
    again.add(OUT, "late", 11)
    again.finish(12)
    again.flush()
    assert len([r for r in records(again.read(1, 10**6)) if r.stream is LogStream.SYSTEM]) == 1
    again.close()


@pytest.mark.parametrize("torn", [b"11\to\t103\t1\t2", b"11\to\t103\t3\t40\nhalf a chunk\nhalf a li",
                                  b"11\to\t103\t1\t13\nno newline at its end", b"11\to\t103\t5\t5\nfour\n"])
def test_recovery_cuts_a_torn_record_and_resumes(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "s"
    spool = LogSpool(path, max_bytes=10**9)
    for i in range(10):
        spool.add(OUT, f"l{i}", 100 + i // 4)  # times 100,100,100,100,101,...,102,102
    spool.close()
    with open(path, "ab") as fh:
        fh.write(torn)  # killed mid-write: in the header, in the chunk's text
    again = LogSpool(path, max_bytes=10**9)
    assert again.last_seq == 10 and again.flushed_seq == 10
    assert again.counts() == {OUT: 10, LogStream.STDERR: 0} and again.last_text(OUT) == b"l9"
    again.add(OUT, "next", 103)
    again.flush()
    assert [r.text for r in records(again.read(10, 5))] == ["l9", "next"]
    assert [r.seq for r in records(again.read(1, 100))] == list(range(1, 12))
    assert [r.text for r in again.tail(2)] == ["l9", "next"]
    again.close()


async def test_sender_keeps_at_most_a_window_unacknowledged(tmp_path: Path) -> None:
    import asyncio

    from hivemind_worker.tasks.logpump import LogSender

    class SlowMaster:
        def __init__(self) -> None:
            self.got: list[int] = []

        async def emit_logs(self, task_id, lines) -> None:
            self.got.extend(seq for chunk in lines for seq in range(chunk.first_seq, chunk.last_seq + 1))

    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    for i in range(5000):
        spool.add(OUT, f"l{i}", i)
    spool.flush()
    master = SlowMaster()
    sender = LogSender("t", spool, master, acked_seq=0)
    sender.window = 1200
    sender.start()
    # SlowMaster never suspends, so the sender parks on its window in the same step
    # that sends the window's last line: what the test sees then is all it sends.
    await until(lambda: len(master.got) >= 1200)
    assert master.got == list(range(1, 1201))  # nothing acknowledged: the window is full
    sender.ack(1000)
    await until(lambda: len(master.got) >= 2200)
    assert master.got == list(range(1, 2201))
    sender.ack(2200)
    await until(lambda: len(master.got) >= 3400)
    assert master.got == list(range(1, 3401))
    await sender.stop()
    spool.close()


async def test_sender_keeps_at_most_a_few_mib_of_long_lines_unacknowledged(tmp_path: Path) -> None:
    from hivemind_worker.tasks import logpump

    class SilentMaster:
        def __init__(self) -> None:
            self.got: list[int] = []

        async def emit_logs(self, task_id, lines) -> None:
            self.got.extend(seq for chunk in lines for seq in range(chunk.first_seq, chunk.last_seq + 1))

    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    for i in range(200):
        spool.add(OUT, f"{i:04d}" + "x" * 100_000, i)  # 200 lines, ~20 MB: far under the line window
    spool.flush()
    master = SilentMaster()
    sender = logpump.LogSender("t", spool, master, acked_seq=0)  # type: ignore[arg-type]
    sender.start()
    # As above: the sender parks on its byte window in the step that fills it.
    per_batch = logpump.SEND_MAX_BYTES // 100_004 + 1
    await until(lambda: len(master.got) * 100_004 >= logpump.SEND_WINDOW_BYTES)
    assert len(master.got) * 100_004 < logpump.SEND_WINDOW_BYTES + per_batch * 100_004
    sender.ack(len(master.got))
    await until(lambda: len(master.got) * 100_004 >= 2 * logpump.SEND_WINDOW_BYTES)
    assert master.got == list(range(1, len(master.got) + 1))
    await sender.stop()
    spool.close()


def test_tail_of_a_spool_whose_file_was_removed(tmp_path: Path) -> None:
    """The monitor asks a delivered task's tail while its directory is being removed:
    the lines still buffered, never an error (a 500 from /api/tasks in the 60-task drill)."""
    spool = LogSpool(tmp_path / "s", max_bytes=10**9)
    for i in range(3):
        spool.add(OUT, f"old {i}", 1)
    spool.flush()
    assert [r.text for r in spool.tail(2)] == ["old 1", "old 2"]
    spool.add(OUT, "buffered", 2)
    spool.path.unlink()
    assert [r.text for r in spool.tail(5)] == ["buffered"]
    spool.close()
