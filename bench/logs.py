"""Log throughput and agent memory while a task prints a lot.

Runs one task in the real task image through TaskManager + DockerRuntime that
prints ``--total-bytes`` (default 1 GiB) of numbered lines, and measures:

- lines/s from the container to the host (first to last line delivered), and the
  same for the bytes actually spooled and sent (past the spool limit lines are
  dropped, with one marker line, by design);
- the agent's RSS before, at peak (sampled every 100 ms) and at the end: the goal
  is "flat", i.e. the peak does not grow with the output;
- for reference, the raw ceiling of this Docker engine: ``docker logs --follow`` of
  an identical container read to /dev/null.

Paths: ``--via devmaster`` (default) starts a dev-master and an enrolled daemon
(`hivemind-worker run`) on loopback, submits the task and watches the lines land in
the dev-master's database; RSS is the daemon process's. ``--via local`` runs
TaskManager + DockerRuntime in this process with a LocalTaskHost (acknowledges like
a master, keeps no lines); RSS is this process's. Run as root with Docker and the
task image:

    .venv/bin/python bench/logs.py                                       # 1 GiB, 100-byte lines
    .venv/bin/python bench/logs.py --total-bytes 50e6 --spool-max 1e9    # throughput, all delivered
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivemind_worker.config import Settings  # noqa: E402
from hivemind_worker.runtime import DockerRuntime  # noqa: E402
from tests.support.localhost import LocalTaskHost  # noqa: E402
from hivemind_worker.tasks.manager import TaskManager  # noqa: E402
from hivemind_worker.tasks.model import LogRecord, LogStream, Resources, TaskRequest  # noqa: E402

IMAGE = os.environ.get("HIVEMIND_TEST_TASK_IMAGE", "hivemind-task-runtime:local")


def printer(lines: int, line_bytes: int) -> tuple[str, ...]:
    pad = "x" * max(0, line_bytes - 14)
    code = (
        "import sys\n"
        "w = sys.stdout.write\n"
        f"pad = {pad!r}\n"
        f"for i in range({lines}):\n"
        "    w(f'{i:012d} {pad}\\n')\n"
    )
    return ("python3", "-c", code)


class MeteredHost(LocalTaskHost):
    def __init__(self, results: Path) -> None:
        super().__init__(results, keep_lines=False)
        self.first = 0.0
        self.last = 0.0
        self.lines_in = 0

    async def emit_logs(self, task_id: str, lines: list[LogRecord]) -> None:
        now = time.monotonic()
        self.first = self.first or now
        if any(rec.stream is not LogStream.SYSTEM for rec in lines):
            self.last = now  # the drop marker comes at the task's end: not throughput
        self.lines_in += len(lines)
        await super().emit_logs(task_id, lines)


async def sample_rss(stop: asyncio.Event, peak: list[int]) -> None:
    proc = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.1)


async def run_agent_path(args: argparse.Namespace, lines: int) -> dict:
    node = f"bench-logs-{uuid.uuid4().hex[:8]}"
    state = Path(tempfile.mkdtemp(prefix="hivemind-bench-logs-"))
    settings = Settings(state_dir=state, task_image=IMAGE, log_spool_max_bytes=int(args.spool_max))
    host = MeteredHost(state / "results")
    rt = DockerRuntime()
    m = TaskManager(settings, rt, host, node, capacity=Resources(2000, 2 * 1024**3), sampler=None)
    host.manager = m
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    peak = [rss_before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(stop, peak))
    await m.start()
    t0 = time.monotonic()
    try:
        await m.assign(TaskRequest("flood", command=printer(lines, args.line_bytes), resources=Resources(1000, 512 * 1024**2)))
        while m.held_tasks():
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await sampler
        await m.close()
        rt.close()
        subprocess.run(["docker", "rm", "-f", "hivemind-task-flood"], capture_output=True)
    total = time.monotonic() - t0
    rss_end = proc.memory_info().rss
    final = host.final_event("flood")
    shutil.rmtree(state, ignore_errors=True)
    span = max(host.last - host.first, 1e-9)
    return {
        "total_s": total,
        "delivered_lines": host.last_seq.get("flood", 0),
        "delivered_bytes": host.bytes_received.get("flood", 0),
        "span_s": span,
        "gaps": len(host.gaps),
        "rss_before": rss_before,
        "rss_peak": peak[0],
        "rss_end": rss_end,
        "status": final.status.value if final else "?",
    }


def run_devmaster_path(args: argparse.Namespace, lines: int) -> dict:
    from dispatch import COMMAND
    from stack import DevStack

    env = {"HIVEMIND_LOG_SPOOL_MAX_BYTES": str(int(args.spool_max))}
    with DevStack("hivemind-bench-logs-", env) as stack:
        stack.wait_done([stack.submit(COMMAND)], 120)  # connected and warm
        proc = psutil.Process(stack.worker.pid)
        rss_before = proc.memory_info().rss
        peak, samples = rss_before, []
        t0 = time.monotonic()
        task_id = stack.submit(printer(lines, args.line_bytes), cpus=1.0, memory="512m")
        deadline = t0 + 600 + lines / 5000
        while not stack.done([task_id]):
            if time.monotonic() > deadline:
                raise SystemExit(f"the task did not finish; see {stack.base}")
            peak = max(peak, proc.memory_info().rss)
            top = stack.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE task_id=?", (task_id,)).fetchone()[0]
            samples.append((time.monotonic(), top))
            time.sleep(0.1)
        total = time.monotonic() - t0
        rss_end = proc.memory_info().rss
        row = stack.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(text AS BLOB)) + 1), 0), "
            "SUM(stream != 'system'), MAX(seq) FROM logs WHERE task_id=?", (task_id,),
        ).fetchone()
        stored, stored_bytes, task_lines, top = row
        gaps = top - stored
        outcome = stack.conn.execute("SELECT outcome FROM tasks WHERE task_id=?", (task_id,)).fetchone()[0]
        stack.ok = True
    first = next((t for t, seq in samples if seq > 0), t0)
    last = next((t for t, seq in samples if seq >= task_lines), samples[-1][0] if samples else t0)
    return {
        "total_s": total, "delivered_lines": stored, "delivered_bytes": stored_bytes,
        "span_s": max(last - first, 0.1), "gaps": gaps, "rss_before": rss_before, "rss_peak": peak,
        "rss_end": rss_end, "status": outcome,
    }


def docker_ceiling(lines: int, line_bytes: int) -> float:
    """Seconds for `docker logs -f` to read an identical container's output."""
    cid = subprocess.run(
        ["docker", "run", "-d", "--network", "none", IMAGE, *printer(lines, line_bytes)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    try:
        t0 = time.monotonic()
        subprocess.run(["docker", "logs", "-f", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.monotonic() - t0
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-bytes", type=float, default=1024**3)
    ap.add_argument("--line-bytes", type=int, default=100)
    ap.add_argument("--spool-max", type=float, default=Settings().log_spool_max_bytes, help="per-task spool limit")
    ap.add_argument("--via", choices=["devmaster", "local"], default="devmaster")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the raw `docker logs -f` reference")
    args = ap.parse_args()
    lines = int(args.total_bytes // args.line_bytes)
    mib = 1024**2
    print(f"task prints {lines:,} lines of {args.line_bytes} bytes ({args.total_bytes / mib:,.0f} MiB); "
          f"spool limit {args.spool_max / mib:,.0f} MiB")
    r = run_devmaster_path(args, lines) if args.via == "devmaster" else asyncio.run(run_agent_path(args, lines))
    print(f"status {r['status']}, total {r['total_s']:.1f} s (start to result acknowledged)")
    print(f"lines read from Docker and handled (spooled or dropped): {lines:,} in {r['total_s']:.1f} s = "
          f"{lines / r['total_s']:,.0f} lines/s (incl. start + upload)")
    where = "the dev-master's database" if args.via == "devmaster" else "the host"
    print(f"delivered to {where}: {r['delivered_lines']:,} lines, {r['delivered_bytes'] / mib:,.1f} MiB, "
          f"{r['delivered_lines'] / r['span_s']:,.0f} lines/s over {r['span_s']:.1f} s, gaps {r['gaps']}")
    print(f"agent ({'daemon process' if args.via == 'devmaster' else 'this process'}) RSS: before {r['rss_before'] / mib:.1f} MiB, peak {r['rss_peak'] / mib:.1f} MiB, "
          f"end {r['rss_end'] / mib:.1f} MiB (growth at peak {(r['rss_peak'] - r['rss_before']) / mib:+.1f} MiB)")
    if not args.no_ceiling:
        ceiling = docker_ceiling(lines, args.line_bytes)
        print(f"reference: `docker logs -f` of the same output: {ceiling:.1f} s = {lines / ceiling:,.0f} lines/s")


if __name__ == "__main__":
    main()
