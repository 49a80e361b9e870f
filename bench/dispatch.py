"""Dispatch overhead: N trivial tasks through the worker against two references,
all three from the same run: the raw Docker API loop and plain `docker run --rm`.

Every side runs the same image and command (``python3 -c pass`` through the image's
run_task.sh entry point) at the same concurrency:

- ``raw API``: docker-py's low-level API, create/start/wait/remove per task, with the
  SAME create options as the worker's (runtime/spec.create_kwargs: the hardening,
  limits, labels, log driver, a bind-mounted workspace directory made per task).
  It is the engine's own cost of a hardened task: the goal is worker <= 1.10x of it.
- ``raw API, rm after``: the same, but the removal runs after the task's slot is free
  (as the worker removes a container after DONE, overlapped with the next task): the
  stricter reference, since the worker's figures do not include a removal either.
- ``docker run --rm``: the CLI, default options (no hardening, no workspace), one
  process per task: the second reference.

Worker paths:

- ``--via devmaster`` (default): the real thing over loopback. A dev-master is
  started, a node enrolled (`enroll`) and run (`hivemind-worker run`, with
  max_concurrent_tasks = CONCURRENCY), and the N tasks are submitted at once; the
  master assigns them as the node has room. A task's latency is assigned_at -> the
  master receiving DONE (result uploaded and acknowledged); the wall time runs from
  the first submit to the last DONE.
- ``--via local``: TaskManager + DockerRuntime in this process with a LocalTaskHost
  standing in for the master, fed at most CONCURRENCY tasks at a time; latency is
  assign -> the task gone from the node. Isolates the task manager from gRPC.

``--runs R`` (default 3) repeats the three sides R times, interleaved (docker run,
raw, worker; again), and prints each run and the medians; the ratios are of the
median wall times and of the median per-task latencies, each against its reference.

    .venv/bin/python bench/dispatch.py                     # 100 tasks, concurrency 4, 3 runs
    .venv/bin/python bench/dispatch.py --tasks 60 -c 1     # one at a time
    .venv/bin/python bench/dispatch.py --tasks 20 -c 2 --via local --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402
from docker.models.containers import _create_container_args  # noqa: E402

from hivemind_worker.config import Settings  # noqa: E402
from hivemind_worker.runtime import DockerRuntime  # noqa: E402
from hivemind_worker.runtime.spec import ContainerSpec, create_kwargs  # noqa: E402
from hivemind_worker.tasks.manager import TaskManager  # noqa: E402
from hivemind_worker.tasks.model import NetworkPolicy, Resources, TaskRequest, TaskStatus  # noqa: E402
from stack import IMAGE, DevStack  # noqa: E402
from tests.support.localhost import LocalTaskHost  # noqa: E402

COMMAND = ("python3", "-c", "pass")
PER_TASK = Resources(250, 128 * 1024**2)
TASK_USER = Settings().task_user


class Side(NamedTuple):
    wall: float
    latencies: list[float]
    failed: int

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


async def _bounded(n: int, concurrency: int, one) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def slot(i: int) -> None:
        async with slots:
            await one(i)

    t0 = time.monotonic()
    await asyncio.gather(*(slot(i) for i in range(n)))
    return time.monotonic() - t0


async def run_docker_cli(n: int, concurrency: int) -> Side:
    latencies: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        t = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "docker", "run", "--rm", IMAGE, *COMMAND, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            failed += 1
        latencies.append(time.monotonic() - t)

    wall = await _bounded(n, concurrency, one)
    return Side(wall, latencies, failed)


async def run_raw_api(n: int, concurrency: int, remove_after: bool = False) -> Side:
    """create/start/wait/remove through docker-py's low-level API, one thread per
    task in flight, the worker's own create options (see the module docstring);
    ``remove_after``: the removal off the task's slot, its latency ending at the exit."""
    client = docker.from_env(max_pool_size=64)
    base = Path(tempfile.mkdtemp(prefix="hivemind-bench-raw-"))
    run_id = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    failed = 0
    removals: list[asyncio.Future] = []

    def remove(cid: str, workspace: Path) -> None:
        client.api.remove_container(cid, force=True, v=True)
        shutil.rmtree(workspace, ignore_errors=True)

    def task(i: int) -> tuple[int, str, Path]:
        workspace = base / f"t{i}"
        (workspace / "output").mkdir(parents=True)
        if os.geteuid() == 0:  # as the worker does: the task user owns its workspace
            uid, _, gid = TASK_USER.partition(":")
            for path in (workspace, workspace / "output"):
                os.chown(path, int(uid), int(gid or uid))
        spec = ContainerSpec(
            task_id=f"raw-{run_id}-{i}", node_id="bench-raw", image=IMAGE, command=COMMAND, env={},
            workspace=workspace, cpu_millicores=PER_TASK.cpu_millicores, memory_bytes=PER_TASK.memory_bytes,
            pids_limit=Settings().task_pids_limit, gpu_device_ids=(), network=NetworkPolicy.NONE, user=TASK_USER,
        )
        args = _create_container_args({**create_kwargs(spec), "version": client.api._version})
        cid = client.api.create_container(**args)["Id"]
        try:
            client.api.start(cid)
            code = int(client.api.wait(cid)["StatusCode"])
        except BaseException:
            remove(cid, workspace)
            raise
        if not remove_after:
            remove(cid, workspace)
        return code, cid, workspace

    async def one(i: int) -> None:
        nonlocal failed
        t = time.monotonic()
        code, cid, workspace = await asyncio.to_thread(task, i)
        failed += code != 0
        latencies.append(time.monotonic() - t)
        if remove_after:
            removals.append(asyncio.ensure_future(asyncio.to_thread(remove, cid, workspace)))

    try:
        wall = await _bounded(n, concurrency, one)
        await asyncio.gather(*removals)
    finally:
        client.close()
        shutil.rmtree(base, ignore_errors=True)
    return Side(wall, latencies, failed)


@contextlib.contextmanager
def local_worker(concurrency: int) -> Iterator:
    """A TaskManager in this process, started once for all runs (as the daemon is)."""
    node = f"bench-dispatch-{uuid.uuid4().hex[:8]}"
    state = Path(tempfile.mkdtemp(prefix="hivemind-bench-dispatch-"))
    settings = Settings(state_dir=state, task_image=IMAGE, max_concurrent_tasks=concurrency)
    host = LocalTaskHost(state / "results", keep_lines=False)
    rt = DockerRuntime()
    capacity = Resources(PER_TASK.cpu_millicores * concurrency, PER_TASK.memory_bytes * concurrency)
    loop = asyncio.new_event_loop()
    m = TaskManager(settings, rt, host, node, capacity=capacity, sampler=None)
    host.manager = m
    loop.run_until_complete(m.start())
    counter = iter(range(10**9))

    async def batch(n: int) -> Side:
        ids = [f"d{next(counter):05d}" for _ in range(n)]
        latencies: list[float] = []

        async def one(i: int) -> None:
            task_id, t = ids[i], time.monotonic()
            await m.assign(TaskRequest(task_id, command=COMMAND, resources=PER_TASK))
            await host.wait_status(task_id, TaskStatus.DONE, timeout=300)
            # DONE is told before the container and workspace are removed; the slot
            # frees once the task is gone.
            while any(h.task_id == task_id for h in m.held_tasks()):
                await asyncio.sleep(0.002)
            latencies.append(time.monotonic() - t)

        wall = await _bounded(n, concurrency, one)
        failed = sum(1 for t in ids if (e := host.final_event(t)) is None or e.status is not TaskStatus.EXITED)
        return Side(wall, latencies, failed)

    try:
        yield lambda n: loop.run_until_complete(batch(n))
    finally:
        loop.run_until_complete(m.close())
        loop.close()
        rt.close()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def devmaster_worker(concurrency: int) -> Iterator:
    # The node runs CONCURRENCY tasks at once (its task slots), sized so that they fit.
    env = {"HIVEMIND_MAX_CONCURRENT_TASKS": str(concurrency), "HIVEMIND_MAX_CPUS": str(0.25 * concurrency)}
    with DevStack("hivemind-bench-dispatch-", env) as stack:
        stack.wait_done([stack.submit(COMMAND)], 120)  # the node is connected and warm

        def batch(n: int) -> Side:
            t0 = time.time()
            ids = [stack.submit(COMMAND) for _ in range(n)]
            rows = stack.wait_done(ids, 60 + 10 * n)
            wall = max(r["done_at"] for r in rows) - t0
            return Side(wall, [r["done_at"] - r["assigned_at"] for r in rows],
                        sum(1 for r in rows if r["outcome"] != "exited"))

        yield batch
        stack.ok = True


def line(name: str, n: int, side: Side) -> str:
    return (f"{name:>18}: wall {side.wall:6.1f} s, {n / side.wall:5.2f} tasks/s, per task median "
            f"{side.median * 1000:5.0f} ms, p90 {p90(side.latencies) * 1000:5.0f} ms, failed {side.failed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("-c", "--concurrency", type=int, default=4)
    ap.add_argument("--via", choices=["devmaster", "local"], default="devmaster")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n, c = args.tasks, args.concurrency
    label = "dev-master+worker" if args.via == "devmaster" else "task manager"
    print(f"{n} trivial tasks ({' '.join(COMMAND)} in {IMAGE}), concurrency {c}, {args.runs} run(s), "
          f"load average at start {os.getloadavg()[0]:.2f}")
    results: dict[str, list[Side]] = {"docker run --rm": [], "raw API": [], "raw API, rm after": [], label: []}
    with (devmaster_worker if args.via == "devmaster" else local_worker)(c) as worker:
        for r in range(args.runs):
            results["docker run --rm"].append(asyncio.run(run_docker_cli(n, c)))
            results["raw API"].append(asyncio.run(run_raw_api(n, c)))
            results["raw API, rm after"].append(asyncio.run(run_raw_api(n, c, remove_after=True)))
            results[label].append(worker(n))
            print(f"run {r + 1} (load average {os.getloadavg()[0]:.2f})")
            for name, sides in results.items():
                print("  " + line(name, n, sides[-1]))
    med = {name: Side(statistics.median(s.wall for s in sides),
                      [statistics.median(s.median for s in sides)], sum(s.failed for s in sides))
           for name, sides in results.items()}
    print(f"medians of {args.runs} run(s) (load average now {os.getloadavg()[0]:.2f}):")
    for name, side in med.items():
        print(f"{name:>18}: wall {side.wall:6.1f} s, {n / side.wall:5.2f} tasks/s, per task median "
              f"{side.median * 1000:5.0f} ms, failed {side.failed}")
    w = med[label]
    for ref in ("raw API", "raw API, rm after", "docker run --rm"):
        r = med[ref]
        print(f"{label} vs {ref}: wall {w.wall:.1f} s / {r.wall:.1f} s = {w.wall / r.wall:.2f}x; per task "
              f"{w.median * 1000:.0f} ms / {r.median * 1000:.0f} ms = {w.median / r.median:.2f}x; overhead per task "
              f"{(w.wall - r.wall) / n * 1000:+.0f} ms (wall) {(w.median - r.median) * 1000:+.0f} ms (latency)"
              + ("  (goal <= 1.10x)" if ref.startswith("raw API") else ""))


if __name__ == "__main__":
    main()
