"""Dispatch overhead: N trivial tasks through the worker vs plain `docker run --rm`.

Both sides run the same image and command (``python3 -c pass`` through the image's
run_task.sh entry point) at the same concurrency, and the bench prints, per side,
the wall time, the median and p90 per-task latency, and the worker's per-task
overhead and ratio (goal: ratio <= 1.3).

Worker paths:

- ``--via devmaster`` (default): the real thing over loopback. A dev-master is
  started, a node enrolled (`enroll`) and run (`hivemind-worker run`, with
  max_concurrent_tasks = CONCURRENCY), and the N tasks are submitted at once; the
  master assigns them as the node has room. A task's latency is assigned_at -> the
  master receiving DONE (result uploaded and acknowledged, container and workspace
  being removed); the wall time runs from the first submit to the last DONE.
- ``--via local``: TaskManager + DockerRuntime in this process with a LocalTaskHost
  standing in for the master, fed at most CONCURRENCY tasks at a time; latency is
  assign -> the task gone from the node. Isolates the task manager from gRPC.

    .venv/bin/python bench/dispatch.py                   # 100 tasks, concurrency 4
    .venv/bin/python bench/dispatch.py --tasks 20 -c 2 --via local
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivemind_worker.config import Settings  # noqa: E402
from hivemind_worker.runtime import DockerRuntime  # noqa: E402
from tests.support.localhost import LocalTaskHost  # noqa: E402
from hivemind_worker.tasks.manager import TaskManager  # noqa: E402
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus  # noqa: E402
from stack import IMAGE, DevStack  # noqa: E402

COMMAND = ("python3", "-c", "pass")


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


async def run_worker(n: int, concurrency: int) -> tuple[float, list[float], int]:
    node = f"bench-dispatch-{uuid.uuid4().hex[:8]}"
    state = Path(tempfile.mkdtemp(prefix="hivemind-bench-dispatch-"))
    settings = Settings(state_dir=state, task_image=IMAGE, max_concurrent_tasks=concurrency)
    host = LocalTaskHost(state / "results")
    rt = DockerRuntime()
    per_task = Resources(250, 128 * 1024**2)
    capacity = Resources(per_task.cpu_millicores * concurrency, per_task.memory_bytes * concurrency)
    m = TaskManager(settings, rt, host, node, capacity=capacity, sampler=None)
    host.manager = m
    await m.start()
    started: dict[str, float] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        task_id = f"d{i:04d}"
        async with slots:
            started[task_id] = time.monotonic()
            await m.assign(TaskRequest(task_id, command=COMMAND, resources=per_task))
            await host.wait_status(task_id, TaskStatus.DONE, timeout=300)
            # DONE is journaled and told before the container and workspace are removed;
            # the slot (and the master's view) frees once the task is gone.
            while any(h.task_id == task_id for h in m.held_tasks()):
                await asyncio.sleep(0.005)
            latencies.append(time.monotonic() - started[task_id])

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        wall = time.monotonic() - t0
        await m.close()
        rt.close()
        shutil.rmtree(state, ignore_errors=True)
    failed = sum(1 for i in range(n) if (e := host.final_event(f"d{i:04d}")) is None or e.status is not TaskStatus.EXITED)
    return wall, latencies, failed


async def run_docker(n: int, concurrency: int) -> tuple[float, list[float], int]:
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with slots:
            t = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                "docker", "run", "--rm", IMAGE, *COMMAND,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if await proc.wait() != 0:
                failed += 1
            latencies.append(time.monotonic() - t)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - t0, latencies, failed


def run_devmaster(n: int, concurrency: int) -> tuple[float, list[float], int]:
    # The node runs CONCURRENCY tasks at once (its task slots), sized so that they fit.
    env = {"HIVEMIND_MAX_CONCURRENT_TASKS": str(concurrency), "HIVEMIND_MAX_CPUS": str(0.25 * concurrency)}
    with DevStack("hivemind-bench-dispatch-", env) as stack:
        stack.wait_done([stack.submit(COMMAND)], 120)  # the node is connected and warm
        t0 = time.time()
        ids = [stack.submit(COMMAND) for _ in range(n)]
        rows = stack.wait_done(ids, 60 + 10 * n)
        stack.ok = True
    wall = max(r["done_at"] for r in rows) - t0
    latencies = [r["done_at"] - r["assigned_at"] for r in rows]
    failed = sum(1 for r in rows if r["outcome"] != "exited")
    return wall, latencies, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("-c", "--concurrency", type=int, default=4)
    ap.add_argument("--via", choices=["devmaster", "local"], default="devmaster")
    args = ap.parse_args()
    n, c = args.tasks, args.concurrency
    print(f"{n} trivial tasks ({' '.join(COMMAND)} in {IMAGE}), concurrency {c}")
    d_wall, d_lat, d_failed = asyncio.run(run_docker(n, c))
    if args.via == "devmaster":
        w_wall, w_lat, w_failed = run_devmaster(n, c)
    else:
        w_wall, w_lat, w_failed = asyncio.run(run_worker(n, c))
    label = "dev-master+worker" if args.via == "devmaster" else "task manager"
    for name, wall, lat, failed in (("docker run --rm", d_wall, d_lat, d_failed), (label, w_wall, w_lat, w_failed)):
        print(
            f"{name:>17}: wall {wall:6.1f} s, {n / wall:5.2f} tasks/s, per task median "
            f"{statistics.median(lat):.2f} s, p90 {p90(lat):.2f} s, failed {failed}"
        )
    overhead = statistics.median(w_lat) - statistics.median(d_lat)
    print(f"worker overhead per task (median latency): {overhead * 1000:+.0f} ms; "
          f"ratio of medians {statistics.median(w_lat) / statistics.median(d_lat):.2f}, "
          f"ratio of wall times {w_wall / d_wall:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
