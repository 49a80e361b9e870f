"""The log pump's resumed reads: a read that breaks (the engine went away) is
followed by a read of the engine's whole log, which skips by count, per stream,
what the spool holds; a line the broken read had only part of is stored whole,
once (the drill once stored an EMPTY line in place of "line 31": the engine had
logged the newline after a restart but lost the text it had not written yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.runtime.logstream import INTERRUPTED
from hivemind_worker.tasks.logpump import LogSender, pump
from hivemind_worker.tasks.logspool import LogSpool
from hivemind_worker.tasks.model import LogStream
from tests.support.localhost import LocalTaskHost
from tests.unit.tasks.fakes import records

OUT, ERR = LogStream.STDOUT, LogStream.STDERR


class Reads:
    """follow_logs() answering each call with the next scripted read: (stream, text,
    time) items, in batches of 7 lines as chunks (consecutive lines of one stream in
    one chunk, as logstream gives them, so a skip by count ends inside a chunk; an
    INTERRUPTED one in its own batch), then either the end (None) or an error to raise."""

    def __init__(self, *reads: tuple[list[tuple[LogStream, str, int]], BaseException | None]) -> None:
        self.reads = list(reads)
        self.calls = 0

    async def follow_logs(self, container_id: str, since_s: float | None = None):
        items, error = self.reads[self.calls]
        self.calls += 1
        batch: list[tuple[LogStream, str, int]] = []
        for item in items:
            if item[2] == INTERRUPTED:
                if batch:
                    yield chunks(batch)
                yield [(item[0], item[1].encode(), INTERRUPTED)]
                yield [(item[0], item[1].encode(), INTERRUPTED)]
                batch = []
                continue
            batch.append(item)
            if len(batch) == 7:
                yield chunks(batch)
                batch = []
        if batch:
            yield chunks(batch)
        if error is not None:
            raise error


def chunks(lines: list[tuple[LogStream, str, int]]) -> list[tuple[LogStream, bytes, int]]:
    out: list[tuple[LogStream, bytes, int]] = []
    for stream, text, time_ms in lines:
        if out and out[-1][0] is stream:
            out[-1] = (stream, out[-1][1] + text.encode() + b"\n", out[-1][2])
        else:
            out.append((stream, text.encode() + b"\n", time_ms))
    return out


def out(i: int) -> tuple[LogStream, str, int]:
    return (OUT, f"line {i}", 1000 + i)


def spooled(spool: LogSpool) -> list[tuple[LogStream, str]]:
    spool.flush()
    return [(r.stream, r.text) for r in records(spool.read(1, 10**6, 10**9))]


async def run_pumps(tmp_path: Path, runtime: Reads) -> LogSpool:
    spool = LogSpool(tmp_path / "spool", max_bytes=10**9)
    sender = LogSender("t", spool, LocalTaskHost(tmp_path / "results"), 0)
    while True:
        try:
            await pump(runtime, "cid", spool, sender)  # type: ignore[arg-type]
            return spool
        except RuntimeUnavailable:
            continue  # as supervise does once the engine answers again


@pytest.mark.parametrize("engine_kept", ["the whole line", "only the newline"])
async def test_a_line_split_across_an_interrupted_stream_is_stored_whole_once(tmp_path: Path, engine_kept):
    # Live read (attach): lines 1-30, stderr "warn" after line 10, then the task had
    # written "line 31" without its newline when the engine went away.
    live = [out(i) for i in range(1, 11)] + [(ERR, "warn", 1010)] + [out(i) for i in range(11, 31)]
    live.append((OUT, "line 31", INTERRUPTED))
    # The engine's log, read again: stderr lands elsewhere among stdout (its own order),
    # and line 31 is whole, or (the old engine lost its unwritten text) just its newline.
    again = [out(i) for i in range(1, 13)] + [(ERR, "warn", 1012)] + [out(i) for i in range(13, 31)]
    again += [(OUT, "line 31" if engine_kept == "the whole line" else "", 1031), out(32), (ERR, "bye", 1033)]
    runtime = Reads((live, RuntimeUnavailable("the engine went away")), (again, None))
    spool = await run_pumps(tmp_path, runtime)
    assert runtime.calls == 2
    assert spooled(spool) == ([(OUT, f"line {i}") for i in range(1, 11)] + [(ERR, "warn")]
                              + [(OUT, f"line {i}") for i in range(11, 33)] + [(ERR, "bye")])
    assert spool.carry == {}


async def test_a_read_interrupted_twice_still_joins_the_line(tmp_path: Path):
    first = [out(1), (OUT, "li", INTERRUPTED)]
    second = [out(1), (OUT, "line", INTERRUPTED)]  # broke again, a little further
    third = [out(1), (OUT, "line 2", 1002), out(3)]
    spool = await run_pumps(tmp_path, Reads((first, RuntimeUnavailable("x")), (second, RuntimeUnavailable("y")),
                                            (third, None)))
    assert [t for _, t in spooled(spool)] == ["line 1", "line 2", "line 3"]


async def test_a_resumed_read_that_does_not_line_up_says_so_in_the_log(tmp_path: Path):
    live = [out(1), out(2), out(3)]
    rotated = [out(3), out(4), out(5)]  # the engine's log lost its start: skipping 3 lands on line 5
    spool = await run_pumps(tmp_path, Reads((live, RuntimeUnavailable("x")), (rotated, None)))
    lines = spooled(spool)
    assert lines[:3] == [(OUT, "line 1"), (OUT, "line 2"), (OUT, "line 3")]
    assert lines[3][0] is LogStream.SYSTEM and "did not line up" in lines[3][1]


async def test_a_restarted_agent_resumes_from_the_recovered_spool_by_count(tmp_path: Path):
    spool = LogSpool(tmp_path / "spool", max_bytes=10**9)
    for item in [out(1), (ERR, "e1", 1001), out(2)]:
        spool.add(*item)
    spool.close()  # the agent stops; a new one recovers the spool from its file
    spool = LogSpool(tmp_path / "spool", max_bytes=10**9)
    sender = LogSender("t", spool, LocalTaskHost(tmp_path / "results"), 0)
    engine_log = [(ERR, "e1", 999), out(1), out(2), out(3), (ERR, "e2", 1004)]
    await pump(Reads((engine_log, None)), "cid", spool, sender)  # type: ignore[arg-type]
    assert [t for _, t in spooled(spool)] == ["line 1", "e1", "line 2", "line 3", "e2"]
