"""Log lines on the wire: LogChunks to a master that takes them (split at lines to
stay under a small message limit, an over-long line cut and marked), LogLines with
the same seqs to one that does not (decoded, invalid UTF-8 replaced)."""

from __future__ import annotations

from hivemind_worker.control import messages
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.tasks.model import LogChunk, LogStream

LIMIT = 64 * 1024  # the smallest message limit a session may have


def chunk(first_seq: int, text: bytes, stream: LogStream = LogStream.STDOUT) -> LogChunk:
    return LogChunk(first_seq, stream, text, 7, text.count(b"\n"))


def wire_lines(out: list) -> list[tuple[int, int, bytes]]:
    got = []
    for message, lines, _ in out:
        assert message.ByteSize() < LIMIT and not message.logs.lines
        assert lines == sum(c.text.count(b"\n") for c in message.logs.chunks)
        for c in message.logs.chunks:
            got += [(c.first_seq + i, c.stream, line) for i, line in enumerate(c.text.split(b"\n")[:-1])]
    return got


def test_chunks_are_split_at_lines_under_a_small_message_limit():
    big = b"".join(b"%06d " % i + b"z" * 90 + b"\n" for i in range(3000))  # ~300 KB: several messages
    chunks = [chunk(1, big), chunk(3001, b"e1\ne2\n", LogStream.STDERR), chunk(3003, b"\xff\xfe raw\r\n")]
    out = messages.log_messages("t", chunks, LIMIT, as_chunks=True)
    assert len(out) > 4
    got = wire_lines(out)
    want = [(1 + i, pb.LOG_STREAM_STDOUT, line) for i, line in enumerate(big.split(b"\n")[:-1])]
    want += [(3001, pb.LOG_STREAM_STDERR, b"e1"), (3002, pb.LOG_STREAM_STDERR, b"e2"),
             (3003, pb.LOG_STREAM_STDOUT, b"\xff\xfe raw\r")]
    assert got == want
    assert sum(text_bytes for _, _, text_bytes in out) == sum(len(c.text) for c in chunks)


def test_a_line_longer_than_a_message_is_cut_and_marked():
    text = b"before\n" + b"L" * 200_000 + b"\nafter\n"
    out = messages.log_messages("t", [chunk(10, text)], LIMIT, as_chunks=True)
    got = wire_lines(out)
    assert [seq for seq, _, _ in got] == [10, 11, 12]
    assert got[0][2] == b"before" and got[2][2] == b"after"
    assert got[1][2].startswith(b"LLLL") and got[1][2].endswith(b" [hivemind: line truncated]")


def test_a_master_without_chunks_gets_loglines_with_the_same_seqs():
    chunks = [chunk(5, b"caf\xc3\xa9\n\xff bad\n"), chunk(7, b"x" * 100_000 + b"\n", LogStream.STDERR)]
    out = messages.log_messages("t", chunks, LIMIT, as_chunks=False)
    lines = [line for message, _, _ in out for line in message.logs.lines]
    assert all(not message.logs.chunks and message.ByteSize() < LIMIT for message, _, _ in out)
    assert [(line.seq, line.text[:8]) for line in lines] == [(5, "caf\u00e9"), (6, "\ufffd bad"), (7, "xxxxxxxx")]
    assert lines[2].text.endswith(" [hivemind: line truncated]") and lines[2].stream == pb.LOG_STREAM_STDERR
    assert sum(n for _, n, _ in out) == 3


def test_the_welcome_says_whether_the_master_takes_chunks():
    assert messages.welcome_from_pb(pb.Welcome(session_id="s", log_chunks=True)).log_chunks
    assert not messages.welcome_from_pb(pb.Welcome(session_id="s")).log_chunks
