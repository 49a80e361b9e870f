"""After the container exits, every line Docker holds reaches the master: a slow log
reader gets as long as it keeps bringing lines, a stalled one is replaced by a read
of the stopped container from where the spool ends (hand-written runtime fakes)."""

from __future__ import annotations

import asyncio

from hivemind_worker.tasks import supervise
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import LogStream, TaskStatus
from tests.support.localhost import LocalTaskHost
from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script, request

LINES = [f"line {i}" for i in range(1, 201)]


async def run_one(settings, runtime, host) -> TaskManager:
    m = TaskManager(settings, runtime, host, "node-1", capacity=CAPACITY, sampler=None)
    host.manager = m
    await m.start()
    await m.assign(request("t"))
    await host.wait_status("t", TaskStatus.DONE, timeout=20)
    await m.close()
    return m


def texts(host: LocalTaskHost) -> list[str]:
    return [r.text for r in host.lines["t"] if r.stream is not LogStream.SYSTEM]


async def test_a_reader_slower_than_the_idle_limit_still_delivers_every_line(settings, runtime: FakeRuntime,
                                                                            host: LocalTaskHost, monkeypatch):
    monkeypatch.setattr(supervise, "LOG_IDLE_S", 0.3)
    runtime.scripts["t"] = Script(lines=LINES)
    follow = runtime.follow_logs

    async def slow(cid, since_s=None):  # a busy host: the whole read takes ~10 idle limits
        async for line in follow(cid, since_s):
            await asyncio.sleep(0.015)
            yield line

    runtime.follow_logs = slow  # type: ignore[method-assign]
    await run_one(settings, runtime, host)
    assert texts(host) == LINES and not host.gaps and not host.duplicates
    assert host.final_event("t").status is TaskStatus.EXITED


async def test_a_stalled_reader_is_replaced_and_no_line_is_lost(settings, runtime: FakeRuntime,
                                                               host: LocalTaskHost, monkeypatch):
    monkeypatch.setattr(supervise, "LOG_IDLE_S", 0.3)
    runtime.scripts["t"] = Script(lines=LINES)
    follow = runtime.follow_logs
    calls = []

    async def stalls_once(cid, since_s=None):  # the first stream hangs after 50 lines
        calls.append(since_s)
        n = 0
        async for line in follow(cid, since_s):
            n += 1
            if len(calls) == 1 and n > 50:
                await asyncio.Event().wait()
            yield line

    runtime.follow_logs = stalls_once  # type: ignore[method-assign]
    await run_one(settings, runtime, host)
    assert len(calls) == 2  # read again (from the start: the pump skips what the spool has)
    assert texts(host) == LINES and not host.gaps and not host.duplicates


async def test_a_reader_that_gives_nothing_more_says_so_in_the_log(settings, runtime: FakeRuntime,
                                                                  host: LocalTaskHost, monkeypatch):
    monkeypatch.setattr(supervise, "LOG_IDLE_S", 0.2)
    runtime.scripts["t"] = Script(lines=LINES)
    follow = runtime.follow_logs

    async def always_stalls(cid, since_s=None):
        n = 0
        async for line in follow(cid, since_s):
            n += 1
            if n > 50:
                await asyncio.Event().wait()
            yield line

    runtime.follow_logs = always_stalls  # type: ignore[method-assign]
    await run_one(settings, runtime, host)
    got = texts(host)
    assert 50 <= len(got) < len(LINES) and got == LINES[:len(got)]  # a prefix, no gap, no duplicate
    notes = [r.text for r in host.lines["t"] if r.stream is LogStream.SYSTEM]
    assert any("Docker gave no more of the task's output" in n for n in notes), notes
