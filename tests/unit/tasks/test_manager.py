"""TaskManager against fakes of our own seams (FakeRuntime, LocalTaskHost): the state
machine, admission, cancel/timeout/OOM, logs across reconnects and restarts,
pressure and drain. The real-Docker versions are in tests/integration/tasks/."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskStatus
from hivemind_worker.tasks.pressure import LOW_SHARES, NORMAL_SHARES
from tests.support.wait import until
from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script, make_bundle, request

S = TaskStatus


def manager(settings: Settings, runtime: FakeRuntime, host: LocalTaskHost, **kw) -> TaskManager:
    kw.setdefault("sampler", None)
    m = TaskManager(settings, runtime, host, "node-1", capacity=kw.pop("capacity", CAPACITY), **kw)
    host.manager = m
    return m


def read_result(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


async def test_bundle_task_end_to_end(tmp_path, settings, runtime, host) -> None:
    size, sha = make_bundle(tmp_path / "b.zip", {"main.py": "print('hi')\n", "data/x.txt": "x"})
    host.bundles["t1"] = tmp_path / "b.zip"
    runtime.scripts["t1"] = Script(lines=[f"line {i}" for i in range(1234)], exit_code=0)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t1", bundle_size=size, bundle_sha256=sha))
    await until(lambda: not m.held_tasks())
    assert host.statuses("t1") == [S.ACCEPTED, S.FETCHING, S.RUNNING, S.EXITED, S.UPLOADING, S.DONE]
    assert host.final_event("t1").reason == "exited with code 0"
    assert [r.seq for r in host.lines["t1"]] == list(range(1, 1235))
    assert host.lines["t1"][-1].text == "line 1233"
    files = read_result(host.results["t1"])
    assert files["logs.txt"].decode().splitlines() == [f"line {i}" for i in range(1234)]
    record = json.loads(files["exit.json"])
    assert (record["status"], record["exit_code"], record["log_lines"]) == ("exited", 0, 1234)
    assert host.uploads == {"t1": 1}
    assert not (settings.state_dir / "tasks" / "t1").exists()
    assert runtime.containers == {} and runtime.removed
    await until(lambda: runtime.gc_calls >= 1)  # image hygiene after a delivered task
    spec_env = None  # the container got the workspace with the unpacked bundle
    assert m.free() == CAPACITY
    assert m.snapshot() == [] and m.history()[0]["status"] == "done"
    await m.close()
    del spec_env


async def test_container_spec_limits_and_pull(settings, runtime, host) -> None:
    runtime.scripts["t"] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t", image="other:1", resources=Resources(1500, 300 * 1024**2), command=("echo", "x"),
                           entrypoint="run.sh", env={"K": "V"}))
    await until(lambda: S.RUNNING in host.statuses("t"))
    assert runtime.pulled == ["other:1"]
    assert any(e.status is S.PULLING and e.detail == "pulling 1.0/1.0 MB" for e in host.events)
    spec = runtime.by_task("t").spec
    assert (spec.cpu_millicores, spec.memory_bytes, spec.pids_limit) == (1500, 300 * 1024**2, settings.task_pids_limit)
    assert (spec.command, spec.entrypoint, spec.env["K"], spec.user) == (("echo", "x"), "run.sh", "V", settings.task_user)
    assert spec.workspace == (settings.state_dir / "tasks" / "t" / "workspace").resolve()
    assert (spec.workspace / "output").is_dir()
    snap = m.snapshot()[0]
    assert (snap["task_id"], snap["status"], snap["container_id"], snap["exit_code"]) == ("t", "running", runtime.by_task("t").cid, None)
    assert snap["resources"] == {"cpu_millicores": 1500, "memory_bytes": 300 * 1024**2, "gpu_count": 0}
    assert m.free() == Resources(2500, CAPACITY.memory_bytes - 300 * 1024**2, 0)
    await m.cancel("t", "test over")
    await until(lambda: not m.held_tasks())
    await m.close()


async def test_rejections(settings, runtime, host) -> None:
    runtime.scripts["a"] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("big", resources=Resources(16000, 1024**3)))
    assert host.final_event("big").reason == "needs 16.0 CPUs, the node has only 4.0 CPUs in all"
    await m.assign(request("a", resources=Resources(2500, 1024**3)))
    await m.assign(request("b", resources=Resources(4000, 1024**3)))
    deferred = host.last_event("b")  # not now: the master keeps it queued
    assert (deferred.status, deferred.reason, deferred.seq) == (S.DEFERRED, "needs 4.0 CPUs, 1.5 free", 0)
    await m.assign(request("g", resources=Resources(1000, 1024**3, 1)))
    assert "GPU" in host.final_event("g").reason
    await m.assign(request("../x"))
    assert "invalid task id" in host.final_event("../x").reason
    n = len(host.events)
    await m.assign(request("a", resources=Resources(2500, 1024**3)))  # repeated: no second run
    assert len(runtime.containers) <= 1 and host.events[n].status in (S.ACCEPTED, S.RUNNING)
    await m.cancel("a", "bye")
    await until(lambda: not m.held_tasks())
    await m.close()


async def test_concurrency_limit(tmp_path, runtime, host) -> None:
    settings = Settings(state_dir=tmp_path / "s", max_concurrent_tasks=2)
    for t in "abc":
        runtime.scripts[t] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    for t in "abc":
        await m.assign(request(t, resources=Resources(100, 1024**2)))
    assert host.last_event("c").status is S.DEFERRED
    assert host.last_event("c").reason == "node busy: 2 of 2 task slots in use"
    for t in "ab":
        await m.cancel(t, "x")
    await until(lambda: not m.held_tasks())
    await m.close()


@pytest.mark.parametrize(
    "script,status,code,reason",
    [
        (Script(exit_code=3), S.EXITED, 3, "exited with code 3"),
        (Script(oom=True), S.OOM_KILLED, 137, "out of memory: the task passed its 256 MiB limit and was killed"),
        (Script(exit_code=97), S.FAILED, 97, "dependency install failed"),
        (Script(exit_code=98), S.FAILED, 98, "no entry point"),
    ],
)
async def test_exit_verdicts(settings, runtime, host, script, status, code, reason) -> None:
    runtime.scripts["t"] = script
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: not m.held_tasks())
    ev = host.final_event("t")
    assert (ev.status, ev.exit_code) == (status, code) and ev.reason.startswith(reason)
    await m.close()


async def test_cancel_and_timeout(settings, runtime, host) -> None:
    runtime.scripts["c"] = Script(lines=["started"], hang=True)
    runtime.scripts["t"] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("c"))
    await m.assign(request("t", timeout_s=0.3))
    await until(lambda: host.lines.get("c"))
    await m.cancel("c", "user asked")
    await until(lambda: not m.held_tasks())
    ev = host.final_event("c")
    assert (ev.status, ev.reason, ev.exit_code) == (S.CANCELLED, "cancelled: user asked", 137)
    ev = host.final_event("t")
    assert ev.status is S.TIMED_OUT and ev.reason == "timeout: ran longer than 0.3 s; killed"
    assert json.loads(read_result(host.results["t"])["exit.json"])["status"] == "timed_out"
    await m.close()


async def test_cancel_while_fetching_never_starts_a_container(tmp_path, settings, runtime, host) -> None:
    gate = asyncio.Event()

    async def slow_fetch(task_id, dest, size, sha256):
        await gate.wait()

    host.fetch_bundle = slow_fetch  # type: ignore[method-assign]
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("f", bundle_size=10, bundle_sha256="00"))
    await until(lambda: S.FETCHING in host.statuses("f"))
    await m.cancel("f", "changed my mind")
    await until(lambda: not m.held_tasks())
    assert host.final_event("f").status is S.CANCELLED
    assert runtime.containers == {} and host.uploads == {"f": 1}
    await m.close()


async def test_bad_bundle_fails_with_reason_and_never_runs(tmp_path, settings, runtime, host) -> None:
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    host.bundles["b"] = tmp_path / "bad.zip"
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("b", bundle_size=16))
    await until(lambda: not m.held_tasks())
    ev = host.final_event("b")
    assert ev.status is S.FAILED and "not a zip" in ev.reason
    assert runtime.containers == {} and runtime.removed == []
    await m.close()


async def test_logs_resent_after_reconnect_and_result_reuploaded(settings, runtime, host) -> None:
    runtime.scripts["t"] = Script(lines=[f"l{i}" for i in range(3000)], hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    host.online = False  # the session is down from the start
    await m.assign(request("t"))
    await until(lambda: runtime.has("t") and len(runtime.by_task("t").log) == 3000)
    await until(lambda: host.refused > 0, what="the log sender trying the offline host")
    assert host.lines == {}
    host.online = True
    await m.resync()
    await until(lambda: host.last_seq.get("t") == 3000)
    host.online = False
    await runtime.kill(runtime.by_task("t").cid)
    await until(lambda: m.held_tasks() and m.held_tasks()[0].result_pending)
    assert host.uploads == {}
    host.online = True
    await m.resync()
    await until(lambda: not m.held_tasks())
    assert [r.seq for r in host.lines["t"]] == list(range(1, 3001)) and not host.gaps
    assert host.uploads == {"t": 1}
    await m.close()


async def test_restart_reattaches_running_and_delivers_once(settings, runtime, tmp_path) -> None:
    host1 = LocalTaskHost(tmp_path / "r1", auto_ack=False)  # acknowledges nothing
    runtime.scripts["t"] = Script(lines=[f"a{i}" for i in range(1000)], hang=True, per_ms=7)
    m1 = manager(settings, runtime, host1)
    await m1.start()
    await m1.assign(request("t"))
    await until(lambda: host1.last_seq.get("t") == 1000)
    await m1.close()  # the agent goes away; the container keeps running

    c = runtime.by_task("t")
    assert c.running
    base = c.log[-1][2]
    for i in range(500):  # printed while no agent watched, some in the same millisecond
        c.log.append((c.log[0][0], f"b{i}", base + i // 5))

    host2 = LocalTaskHost(tmp_path / "r2")
    m2 = manager(settings, runtime, host2)
    await m2.start()
    assert [h.task_id for h in m2.held_tasks()] == ["t"]
    await until(lambda: host2.last_seq.get("t") == 1500)
    runtime._exit(c, 0, False)
    await until(lambda: not m2.held_tasks())
    texts = [r.text for r in host2.lines["t"]]
    assert texts == [f"a{i}" for i in range(1000)] + [f"b{i}" for i in range(500)]
    assert host2.duplicates == 0 and host2.uploads == {"t": 1} and host1.uploads == {}
    await m2.close()

    host3 = LocalTaskHost(tmp_path / "r3")
    m3 = manager(settings, runtime, host3)
    await m3.start()
    assert m3.held_tasks() == [] and host3.events == []
    await m3.close()


async def test_restart_after_exit_while_down_and_while_uploading(settings, runtime, tmp_path) -> None:
    host1 = LocalTaskHost(tmp_path / "r1")
    runtime.scripts["x"] = Script(lines=["one"], hang=True)
    runtime.scripts["u"] = Script(lines=["two"], exit_code=4)
    m1 = manager(settings, runtime, host1)
    await m1.start()
    host1.auto_ack = False
    await m1.assign(request("x"))
    await m1.assign(request("u"))
    await until(lambda: host1.uploads.get("u") == 1 and host1.last_seq.get("x") == 1)
    await m1.close()
    c = runtime.by_task("x")
    c.log.append((c.log[0][0], "three", c.log[-1][2] + 1))
    runtime._exit(c, 0, True)  # OOM-killed while no agent watched

    host2 = LocalTaskHost(tmp_path / "r2")
    m2 = manager(settings, runtime, host2)
    await m2.start()
    await until(lambda: not m2.held_tasks())
    assert host2.final_event("x").status is S.OOM_KILLED
    assert [r.text for r in host2.lines["x"]] == ["one", "three"]
    assert host2.uploads == {"x": 1, "u": 1}
    assert read_result(host2.results["u"])["logs.txt"] == b"two\n"
    await m2.close()


async def test_pressure_stops_admission_and_lowers_low_priority(settings, runtime, host) -> None:
    sample = [(10.0, 10.0)]
    runtime.scripts["hi"] = Script(hang=True)
    runtime.scripts["lo"] = Script(hang=True)
    m = manager(settings, runtime, host, sampler=lambda: sample[0], pressure_interval_s=3600)
    await m.start()
    await m.assign(request("hi", priority=5))
    await m.assign(request("lo", priority=1))
    await until(lambda: all(S.RUNNING in host.statuses(t) for t in ("hi", "lo")))
    sample[0] = (97.0, 10.0)
    await m.check_pressure()
    await m.assign(request("new"))
    assert host.last_event("new").status is S.DEFERRED
    assert host.last_event("new").reason == "node under pressure (CPU 97% > 90%); try another node"
    assert runtime.by_task("lo").shares == [LOW_SHARES] and runtime.by_task("hi").shares == []
    sample[0] = (20.0, 10.0)
    await m.check_pressure()
    assert runtime.by_task("lo").shares == [LOW_SHARES, NORMAL_SHARES]
    await m.assign(request("new2", resources=Resources(100, 1024**2)))
    assert S.ACCEPTED in host.statuses("new2")
    for t in ("hi", "lo", "new2"):
        await m.cancel(t, "x")
    await until(lambda: not m.held_tasks())
    await m.close()


async def test_drain_waits_then_cancels_and_still_delivers(settings, runtime, host) -> None:
    runtime.scripts["quick"] = Script(lines=["q"], exit_code=0)
    runtime.scripts["slow"] = Script(hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("slow"))
    await until(lambda: S.RUNNING in host.statuses("slow"))
    await m.drain(0.3)
    await m.assign(request("quick"))
    assert host.last_event("quick").status is S.DEFERRED
    assert host.last_event("quick").reason.startswith("node draining (shutdown)")
    ev = host.final_event("slow")
    assert ev.status is S.CANCELLED and "draining" in ev.reason
    assert host.uploads == {"slow": 1} and not m.held_tasks()
    await m.close()


async def test_spool_limit_marker_reaches_the_master(tmp_path, runtime, host) -> None:
    settings = Settings(state_dir=tmp_path / "s", log_spool_max_bytes=20_000)
    runtime.scripts["big"] = Script(lines=["y" * 100 for _ in range(5000)])
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("big"))
    await until(lambda: not m.held_tasks())
    lines = host.lines["big"]
    assert [r.seq for r in lines] == list(range(1, len(lines) + 1))
    assert "dropped" in lines[-1].text and len(lines) < 250
    record = json.loads(read_result(host.results["big"])["exit.json"])
    assert record["log_dropped_lines"] == 5000 - (len(lines) - 1)
    await m.close()


async def test_docker_failure_mid_task_is_retried_not_lost(settings, runtime, host, monkeypatch) -> None:
    from hivemind_worker.tasks import runner

    monkeypatch.setattr(runner, "RETRY_S", 0.05)
    runtime.fail_waits = 2
    runtime.scripts["t"] = Script(lines=[f"x{i}" for i in range(50)], hang=True)
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: host.last_seq.get("t") == 50)
    runtime._exit(runtime.by_task("t"), 5, False)
    await until(lambda: not m.held_tasks())
    assert host.final_event("t").reason == "exited with code 5"
    assert [r.seq for r in host.lines["t"]] == list(range(1, 51)) and host.duplicates == 0
    await m.close()


async def test_container_removed_behind_our_back_is_lost(settings, runtime, tmp_path) -> None:
    host1 = LocalTaskHost(tmp_path / "r1")
    runtime.scripts["t"] = Script(hang=True)
    m1 = manager(settings, runtime, host1)
    await m1.start()
    await m1.assign(request("t"))
    await until(lambda: S.RUNNING in host1.statuses("t"))
    await m1.close()
    await runtime.remove(runtime.by_task("t").cid)
    host2 = LocalTaskHost(tmp_path / "r2")
    m2 = manager(settings, runtime, host2)
    await m2.start()
    await until(lambda: not m2.held_tasks())
    ev = host2.final_event("t")
    assert ev.status is S.LOST and "disappeared" in ev.reason and host2.uploads == {"t": 1}
    await m2.close()


async def test_bundle_fetch_waits_for_the_master(tmp_path, settings, runtime, host) -> None:
    from hivemind_worker.errors import MasterUnreachable

    size, sha = make_bundle(tmp_path / "b.zip", {"main.py": "print(1)"})
    host.bundles["t"] = tmp_path / "b.zip"
    real_fetch = host.fetch_bundle
    calls = []

    async def flaky_fetch(*args):
        calls.append(1)
        if len(calls) == 1:
            raise MasterUnreachable("no session")
        await real_fetch(*args)

    host.fetch_bundle = flaky_fetch  # type: ignore[method-assign]
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t", bundle_size=size, bundle_sha256=sha))
    await until(lambda: calls)
    await m.resync()
    await until(lambda: not m.held_tasks())
    assert host.final_event("t").status is S.EXITED and len(calls) == 2
    await m.close()


async def test_gpus_are_given_exclusively_and_freed(settings, runtime, host) -> None:
    from hivemind_worker.runtime.gpu import GpuAllocator, GpuDevice, StaticGpuInventory

    inv = StaticGpuInventory([GpuDevice(i, f"GPU-{i}", "fake", 16 * 1024**3) for i in range(2)])
    gpus = GpuAllocator(inv)
    for t in ("g1", "g2", "g4"):
        runtime.scripts[t] = Script(hang=True)
    m = manager(settings, runtime, host, gpus=gpus, capacity=Resources(4000, 8 * 1024**3, 2))
    await m.start()
    await m.assign(request("g1", resources=Resources(1000, 1024**3, 1)))
    await m.assign(request("g2", resources=Resources(1000, 1024**3, 1)))
    await m.assign(request("g3", resources=Resources(1000, 1024**3, 1)))
    assert (host.last_event("g3").status, host.last_event("g3").reason) == (S.DEFERRED, "needs 1 GPU, 0 free")
    await until(lambda: runtime.has("g1") and runtime.has("g2"))
    ids = {runtime.by_task(t).spec.gpu_device_ids for t in ("g1", "g2")}
    assert ids == {("GPU-0",), ("GPU-1",)}
    await m.cancel("g1", "x")
    await until(lambda: gpus.free == 1)
    await m.assign(request("g4", resources=Resources(1000, 1024**3, 1)))
    await until(lambda: runtime.has("g4"))
    assert runtime.by_task("g4").spec.gpu_device_ids == ("GPU-0",)
    for t in ("g2", "g4"):
        await m.cancel(t, "x")
    await until(lambda: not m.held_tasks())
    assert gpus.free == 2
    await m.close()


async def test_image_pull_or_start_failure_fails_never_falls_back(settings, runtime, host) -> None:
    from hivemind_worker.errors import TaskError

    async def no_pull(image, progress):
        raise TaskError(f"image {image} could not be pulled: registry refused")

    async def no_start(cid):
        raise TaskError("could not select device driver \"nvidia\"")

    runtime.pull = no_pull  # type: ignore[method-assign]
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("p", image="missing:1"))
    await until(lambda: not m.held_tasks())
    ev = host.final_event("p")
    assert ev.status is S.FAILED and "could not be pulled" in ev.reason and runtime.containers == {}
    runtime.start = no_start  # type: ignore[method-assign]
    await m.assign(request("s"))
    await until(lambda: not m.held_tasks())
    ev = host.final_event("s")
    assert ev.status is S.FAILED and "nvidia" in ev.reason and runtime.containers == {}
    assert host.uploads == {"p": 1, "s": 1}
    await m.close()


async def test_done_waits_until_the_master_has_every_log_line(settings, runtime, tmp_path) -> None:
    class ResultOnlyAcks(LocalTaskHost):
        async def emit_logs(self, task_id, lines):
            manager_ = self.manager
            self.manager = None  # record, but do not acknowledge log lines
            try:
                await super().emit_logs(task_id, lines)
            finally:
                self.manager = manager_

    host = ResultOnlyAcks(tmp_path / "r")
    runtime.scripts["t"] = Script(lines=[f"l{i}" for i in range(700)])
    m = manager(settings, runtime, host)
    await m.start()
    await m.assign(request("t"))
    await until(lambda: host.uploads.get("t") == 1)
    await until(lambda: m._runs["t"].result_acked.is_set(), what="the result acknowledged")
    assert [h.task_id for h in m.held_tasks()] == ["t"]  # result acknowledged, logs not yet
    await m.ack_logs("t", 700)
    await until(lambda: not m.held_tasks())
    assert host.statuses("t")[-1] is S.DONE
    await m.close()
