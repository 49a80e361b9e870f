"""Durable task events, attempts and "not now" against fakes of our own seams: every
state change the master must learn reaches it exactly once per seq, in order, across
dropped sessions and agent restarts; deferrals hold nothing; pressure is load that is
not the node's own."""

from __future__ import annotations

from hivemind_worker.runtime.spec import ContainerStats
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.model import DrainCause, DrainState, Resources, TaskStatus
from hivemind_worker.tasks.pressure import HostSize
from tests.unit.tasks.fakes import Script, request
from tests.unit.tasks.test_manager import manager, until

S = TaskStatus


def durable(host: LocalTaskHost, task_id: str) -> list[tuple[int, int, TaskStatus]]:
    return [(e.attempt, e.seq, e.status) for e in host.events if e.task_id == task_id and e.seq]


async def test_exit_while_the_session_is_down_is_delivered_once_after_resync(settings, runtime, host) -> None:
    runtime.scripts["t"] = Script(lines=["x"], hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: runtime.has("t") and runtime.by_task("t").running)
    host.online = False  # the session drops, the task exits meanwhile
    m.session_closed()
    runtime._exit(runtime.by_task("t"), 3, False)
    await until(lambda: m.held_tasks() and m.held_tasks()[0].result_pending)
    assert S.EXITED not in host.statuses("t")
    host.online = True
    await m.resync()
    await until(lambda: not m.held_tasks())
    assert durable(host, "t") == [(1, 1, S.ACCEPTED), (1, 2, S.RUNNING), (1, 3, S.EXITED), (1, 4, S.UPLOADING),
                                  (1, 5, S.DONE)]
    ev = host.final_event("t")
    assert (ev.exit_code, ev.reason) == (3, "exited with code 3")
    assert await m._journal.pending_events() == []  # every one acknowledged, so deleted
    await m.close()


async def test_unacknowledged_events_outlive_the_task_and_the_agent(settings, runtime, tmp_path) -> None:
    deaf = LocalTaskHost(tmp_path / "r1", auto_ack=False)  # a master that applies but never acks
    runtime.scripts["t"] = Script(lines=["x"], exit_code=4)
    m1 = manager(settings, runtime, deaf)
    await m1.start()
    await m1.assign(request("t", attempt=2))
    await m1.assign(request("big", resources=Resources(64000, 1024**3)))  # rejected: no task row
    await until(lambda: deaf.uploads.get("t") == 1)
    await m1.ack_logs("t", 1)  # logs and result acknowledged, events not
    await m1.ack_result("t", attempt=2)
    await until(lambda: not m1.held_tasks())
    await m1.close()

    host2 = LocalTaskHost(tmp_path / "r2")
    m2 = manager(settings, runtime, host2)
    await m2.start()  # the manager forgot t (DONE), the outbox did not
    assert m2.held_tasks() == []
    await m2.resync()
    assert durable(host2, "t") == [(2, n, s) for n, s in
                                   enumerate([S.ACCEPTED, S.RUNNING, S.EXITED, S.UPLOADING, S.DONE], 1)]
    assert durable(host2, "big") == [(1, 1, S.REJECTED)]
    assert host2.final_event("t").exit_code == 4
    await m2.resync()  # acknowledged now: nothing goes twice
    assert len(host2.events) == 6
    await m2.close()


async def test_events_are_sent_in_order_and_stop_after_a_failed_send(settings, runtime, host) -> None:
    runtime.scripts["t"] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    host.online = False
    await m.assign(request("t"))
    await until(lambda: runtime.has("t") and runtime.by_task("t").running)
    host.online = True  # back before any resync: still nothing may overtake ACCEPTED
    await m.cancel("t", "bye")
    await until(lambda: not m.held_tasks())  # the result went; the events wait for the resync
    assert durable(host, "t") == []
    await m.resync()
    seqs = [seq for _, seq, _ in durable(host, "t")]
    assert seqs == list(range(1, len(seqs) + 1)) and host.final_event("t").status is S.CANCELLED
    await m.close()


async def test_attempts_a_new_attempt_runs_again_the_same_is_already_delivered(settings, runtime, host) -> None:
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: not m.held_tasks())
    first = len(host.events)
    await m.assign(request("t"))  # the same attempt again
    assert (host.events[-1].status, host.events[-1].reason, host.events[-1].seq) == (S.DONE, "already delivered", 0)
    assert len(host.events) == first + 1
    await m.assign(request("t", attempt=2, no_retry=True))  # the master re-runs it
    await until(lambda: not m.held_tasks() and (2, 5, S.DONE) in durable(host, "t"))
    assert [(a, s) for a, _, s in durable(host, "t") if s is S.ACCEPTED] == [(1, S.ACCEPTED), (2, S.ACCEPTED)]
    assert host.uploads == {"t": 2}
    row = await m._journal.get("t")
    assert (row.attempt, row.request.no_retry) == (2, True)
    await m.close()


async def test_a_newer_attempt_of_a_held_task_is_deferred(settings, runtime, host) -> None:
    runtime.scripts["t"] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: S.RUNNING in host.statuses("t"))
    await m.assign(request("t", attempt=2))
    ev = host.last_event("t")
    assert (ev.status, ev.attempt, ev.seq) == (S.DEFERRED, 2, 0) and "attempt 1" in ev.reason
    assert [h.attempt for h in m.held_tasks()] == [1]
    await m.cancel("t", "x")
    await until(lambda: not m.held_tasks())
    await m.close()


async def test_deferrals_hold_nothing_and_journal_nothing(settings, runtime, host) -> None:
    low = ["2.1 GiB free < 5.0 GiB"]
    drain = DrainState()
    m = manager(settings, runtime, host, disk_gate=lambda: low[0], drain=drain)
    await m.start()
    await m.assign(request("d"))
    ev = host.last_event("d")
    assert (ev.status, ev.seq, ev.reason) == (S.DEFERRED, 0, "node low on disk (2.1 GiB free < 5.0 GiB)")
    low[0] = ""
    drain.start(DrainCause.OPERATOR)
    assert m.free() == Resources()  # telemetry's free reads the same state
    await m.assign(request("d"))
    assert host.last_event("d").reason == "node draining (operator): it accepts no new tasks"
    assert m.held_tasks() == [] and await m._journal.pending_events() == [] and await m._journal.all() == []
    drain.end(DrainCause.OPERATOR)
    await m.assign(request("d"))
    await until(lambda: not m.held_tasks())
    assert host.final_event("d").status is S.EXITED
    await m.close()


async def test_the_nodes_own_cpu_use_is_not_pressure(settings, runtime, host) -> None:
    sample = [(99.0, 20.0)]
    runtime.scripts["busy"] = Script(hang=True)
    m = manager(settings, runtime, host, sampler=lambda: sample[0], pressure_interval_s=3600)
    m.host_size = HostSize(cores=2, memory_bytes=16 * 1024**3)
    await m.start()
    await m.assign(request("busy", resources=Resources(2000, 1024**3)))
    await until(lambda: runtime.has("busy") and runtime.by_task("busy").running)
    runtime.usage["busy"] = ContainerStats(cpu_percent=196.0, memory_bytes=1024**3, read_bytes=0, write_bytes=0)
    await m.check_pressure()
    assert not m.gauge.under_pressure and m.gauge.cpu_percent == 1.0
    await m.assign(request("next", resources=Resources(500, 1024**2)))
    assert S.ACCEPTED in host.statuses("next")
    runtime.usage["busy"] = ContainerStats(cpu_percent=20.0, memory_bytes=0, read_bytes=0, write_bytes=0)
    await m.check_pressure()  # 99% of the host, the node's own tasks use 10% of it
    assert not m.gauge.under_pressure and m.gauge.cpu_percent == 89.0
    sample[0] = (100.0, 20.0)
    runtime.usage["busy"] = ContainerStats(cpu_percent=10.0, memory_bytes=0, read_bytes=0, write_bytes=0)
    await m.check_pressure()
    assert m.gauge.reason == "CPU 95% > 90%"
    await m.close()  # the containers keep running, as for the next agent


async def test_the_local_history_hears_every_state_change_while_the_session_is_down(settings, runtime, host) -> None:
    seen: list = []
    runtime.scripts["t"] = Script(exit_code=2)
    m = manager(settings, runtime, host, on_event=seen.append)
    await m.start()
    host.online = False
    await m.assign(request("t"))
    await until(lambda: m.held_tasks() and m.held_tasks()[0].result_pending)
    assert [e.status for e in seen] == [S.ACCEPTED, S.RUNNING, S.EXITED, S.UPLOADING] and host.events == []
    assert seen[2].exit_code == 2
    host.online = True
    await m.resync()
    await until(lambda: not m.held_tasks())
    assert [e.status for e in seen][-1] is S.DONE and len(seen) == 5  # resends are not news
    await m.close()
