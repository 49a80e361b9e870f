"""Docker's multiplexed log frames -> lines, and one-shot stats -> ContainerStats."""

from __future__ import annotations

from hivemind_worker.runtime.logstream import MAX_LINE_BYTES, FrameParser
from hivemind_worker.runtime.stats import StatsReader
from hivemind_worker.tasks.model import LogStream

T = b"2026-11-28T17:20:01.123456789Z "


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def split(chunks: list) -> list:
    """Chunks (stream, lines, time) -> (stream, line, time) per line (the tests' view)."""
    out = []
    for stream, text, time_ms in chunks:
        assert text.endswith(b"\n") and b"\r\n" not in text
        out += [(stream, line, time_ms) for line in text.split(b"\n")[:-1]]
    return out


def test_lines_streams_and_times():
    data = frame(1, T + b"hello\n") + frame(2, T + b"oops\r\n") + frame(1, T + b"no newline")
    parser = FrameParser()
    lines = []
    for i in range(0, len(data), 5):  # frames split anywhere by the transport
        lines += split(parser.feed(data[i : i + 5]))
    lines += split(parser.flush())
    ms = 1795886401123
    assert lines == [
        (LogStream.STDOUT, b"hello", ms),
        (LogStream.STDERR, b"oops", ms),
        (LogStream.STDOUT, b"no newline", ms),
    ]


def test_partial_messages_join_and_long_lines_are_cut():
    parser = FrameParser()
    out = split(parser.feed(frame(1, T + b"a" * 10) + frame(1, T + b"b" * 10 + b"\n")))
    assert [l[1] for l in out] == [b"a" * 10 + b"b" * 10]
    out = split(parser.feed(frame(1, T + b"x" * (MAX_LINE_BYTES + 5))))
    assert [len(l[1]) for l in out] == [MAX_LINE_BYTES]
    assert [len(l[1]) for l in split(parser.flush())] == [5]


def test_invalid_utf8_is_carried_raw():
    (chunk,) = FrameParser().feed(frame(1, T + b"\xff\xfe ok\n"))
    assert chunk[1] == b"\xff\xfe ok\n"


def test_cpu_percent_from_consecutive_one_shot_readings():
    reader = StatsReader()

    def raw(cpu: int, system: int) -> dict:
        return {
            "cpu_stats": {"cpu_usage": {"total_usage": cpu}, "system_cpu_usage": system, "online_cpus": 4},
            "memory_stats": {"usage": 300, "limit": 1000, "stats": {"total_inactive_file": 100}},
            "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 7}, {"op": "Write", "value": 9}]},
            "pids_stats": {"current": 3},
        }

    first = reader.read("c", raw(0, 1000))
    assert first.cpu_percent == 0.0
    second = reader.read("c", raw(500, 2000))  # half of all 4 cores' time = 2 cores
    assert second.cpu_percent == 200.0
    assert (second.memory_bytes, second.read_bytes, second.write_bytes, second.pids) == (200, 7, 9, 3)


def test_dechunker_handles_any_split():
    from hivemind_worker.runtime.logstream import Dechunker

    body = [b"hello ", b"x" * 300, b"", b"world\n"]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in body if p) + b"0\r\n\r\n"
    for step in (1, 3, 7, len(wire)):
        d = Dechunker()
        got = b"".join(d.feed(wire[i : i + step]) for i in range(0, len(wire), step))
        assert got == b"".join(body) and d.done


def test_pull_progress_sums_layers_and_throttles():
    import pytest

    from hivemind_worker.errors import TaskError
    from hivemind_worker.runtime.docker_runtime import PullProgress

    p = PullProgress("img:1")
    assert p.update({"status": "Pulling fs layer", "id": "a"}, 0.0) is None
    assert p.update({"status": "Downloading", "id": "a", "progressDetail": {"current": 5_000_000, "total": 20_000_000}}, 1.0) == "pulling 5.0/20.0 MB"
    assert p.update({"status": "Downloading", "id": "b", "progressDetail": {"current": 1_000_000, "total": 60_000_000}}, 1.5) is None
    assert p.update({"status": "Download complete", "id": "a"}, 2.5) == "pulling 21.0/80.0 MB"
    with pytest.raises(TaskError, match="pulling img:1 failed: manifest unknown"):
        p.update({"error": "x", "errorDetail": {"message": "manifest unknown"}}, 3.0)


def test_the_attach_stream_splits_in_bulk_and_stamps_the_read_time():
    parser = FrameParser(stamped=False, clock=lambda: 1795886401.5)
    data = frame(1, b"a\nb\r\nc") + frame(1, b"d\n") + frame(2, b"e1\ne2\n") + frame(1, b"\n")
    chunks = parser.feed(data)
    assert chunks == [(LogStream.STDOUT, b"a\nb\ncd\n", 1795886401500), (LogStream.STDERR, b"e1\ne2\n", 1795886401500),
                      (LogStream.STDOUT, b"\n", 1795886401500)]


def test_both_streams_cut_lines_alike_however_the_frames_fell():
    # A resumed read (the logs endpoint, a stamped frame per line or per 16 KiB piece)
    # skips by count what the attach stream gave: both must give the same lines.
    text = (b"short\r\n" + b"y" * (2 * MAX_LINE_BYTES + 7) + b"\r\n" + b"z" * MAX_LINE_BYTES + b"\n"
            + "\u00e9t\u00e9 \xff".encode("utf-8", "surrogateescape") + b"\n" + b"x" * (MAX_LINE_BYTES + 1) + b"\n")
    attach = FrameParser(stamped=False)
    got_attach = []
    for size in (1, 5000, 70_000, 300_000):  # writes of the task: any size
        attach = FrameParser(stamped=False)
        got = []
        wire = b"".join(frame(1, text[i : i + size]) for i in range(0, len(text), size))
        for i in range(0, len(wire), 65_536):
            got += attach.feed(wire[i : i + 65_536])
        got_attach.append([line for _, line, _ in split(got + attach.flush())])
    logs = FrameParser()
    pieces = [text[i : i + 16384] for i in range(0, len(text), 16384)]  # json-file's partial entries
    got_logs = [line for _, line, _ in split(logs.feed(b"".join(frame(1, T + p) for p in pieces)) + logs.flush())]
    assert all(g == got_logs for g in got_attach)
    assert got_logs[0] == b"short" and [len(x) for x in got_logs[1:4]] == [MAX_LINE_BYTES, MAX_LINE_BYTES, 7]


class _Body:
    def __init__(self, blocks: list[bytes]) -> None:
        self.raw = self
        self.headers: dict[str, str] = {}
        self.blocks = blocks

    def stream(self, size: int, decode_content: bool = False):
        yield from self.blocks

    def close(self) -> None:
        pass


async def test_a_stream_that_ends_while_the_container_runs_is_an_interruption_not_a_line():
    import pytest

    from hivemind_worker.errors import RuntimeUnavailable
    from hivemind_worker.runtime.logstream import INTERRUPTED, follow

    body = _Body([frame(1, b"line 30\nline 3")])  # EOF: the engine went away mid-line
    got = []
    with pytest.raises(RuntimeUnavailable, match="still runs"):
        async for batch in follow(lambda: (body, False), lambda: None, lambda exc: RuntimeUnavailable(str(exc)),
                                  "c", running=lambda: True):
            got += [(item[1], item[2] == INTERRUPTED) for item in batch]
    assert got == [(b"line 30\n", False), (b"line 3", True)]
    # The container's own end: the unfinished last line is a line.
    body = _Body([frame(1, b"line 30\nlast")])
    lines = [item[1:] async for batch in follow(lambda: (body, False), lambda: None,
                                                lambda exc: RuntimeUnavailable(str(exc)), "c", running=lambda: False)
             for item in batch]
    assert [text for text, _ in lines] == [b"line 30\n", b"last\n"] and lines[1][1] != INTERRUPTED


def test_an_attach_stream_nobody_takes_is_closed(monkeypatch):
    import threading

    from hivemind_worker.runtime import attach

    closed = threading.Event()

    class Response:
        def close(self) -> None:
            closed.set()

    monkeypatch.setattr(attach, "TAKE_WITHIN_S", 0.05)
    held = attach.Attachments()
    held.open(lambda cid: Response(), "never-followed")
    assert closed.wait(5) and held.take("never-followed") is None
    closed.clear()
    held.open(lambda cid: Response(), "followed")
    taken = held.take("followed")
    held._expire("followed", taken)  # its timer, once it fires: the follower's now, left open
    assert taken is not None and not closed.is_set()


def test_chunks_carry_the_bytes_as_written_crlf_made_lf():
    parser = FrameParser(stamped=False, clock=lambda: 1.0)
    text = b"".join(b"line %d\r\n" % i for i in range(40_000)) + b"\xff\xfe\r\n"  # > MAX_LINE_BYTES, short lines
    (chunk,) = parser.feed(frame(2, text))
    assert chunk == (LogStream.STDERR, text.replace(b"\r\n", b"\n"), 1000)
    (chunk,) = parser.feed(frame(1, b"a\n" + b"y" * (MAX_LINE_BYTES + 3) + b"\r\nb\r\n"))
    assert chunk[1] == b"a\n" + b"y" * MAX_LINE_BYTES + b"\nyyy\nb\n"


def test_the_logs_endpoint_merges_lines_of_one_time_and_stream():
    t2 = b"2026-11-28T17:20:01.124000000Z "
    data = frame(1, T + b"a\n") + frame(1, T + b"b\n") + frame(2, T + b"c\n") + frame(1, t2 + b"d\n")
    ms = 1795886401123
    assert FrameParser().feed(data) == [(LogStream.STDOUT, b"a\nb\n", ms), (LogStream.STDERR, b"c\n", ms),
                                        (LogStream.STDOUT, b"d\n", ms + 1)]
