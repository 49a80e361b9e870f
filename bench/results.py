"""Result throughput: from a task's exit to the master holding its whole archive,
against a plain `tar czf` + `cp` of the same output on this machine, in the same run.

A task in the real task image writes ``--size`` bytes (default 1 GiB) to
$HIVEMIND_OUTPUT_DIR, in one of two variants:

- ``compressible``: a 1 MiB block of CSV-like lines (numbers and words from a seeded
  generator, ~2.9:1 under gzip -6, 2.5:1 at level 1) written again and again;
- ``incompressible``: fresh ``os.urandom`` bytes.

It runs through the real thing on loopback (a dev-master and an enrolled daemon,
bench/stack.py). The worker's time runs from the task's exit (the node's `exited`
event time) to the master's results/<id>.tar.gz appearing (polled every 20 ms); it
includes archiving (tar + gzip + sha256), the upload in chunks and the master's
check. The reference, same run, same bytes, same file system: the output is written
by the same generator on the host, then `tar czf` (gzip -6, tar's default) and `cp`
of the archive are timed. Rate = output bytes / seconds; the goal is worker >= 0.5x.
The daemon's RSS is sampled every 100 ms from the task's submission to the end.

``--resume`` adds the cut drill: the node talks to the master through a byte-counting
TCP proxy; when the master holds half the archive the daemon gets SIGKILL, is started
again and finishes the upload. Re-sent bytes = what crossed the proxy from the node
to the master (both daemons, all calls) - the archive's size: the goal is < 10 %.

    .venv/bin/python bench/results.py --runs 3 --size 256Mi          # medians of 3
    .venv/bin/python bench/results.py --runs 1 --size 1Gi --resume   # 1 GiB once + the cut
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stack import DevStack, free_port  # noqa: E402

MIB = 1024**2
VARIANTS = ("compressible", "incompressible")

# One generator, run in the task's container and on the host for the reference.
GENERATOR = """\
import os, random, sys
kind, size, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(13)
words = ["ok", "warn", "retry", "sensor", "alpha", "beta", "gamma", "delta"]
lines, n = [], 0
while n < 1 << 20:
    line = f"{n:09d},{rng.choice(words)},{rng.randint(0, 10**6)},{rng.random():.6f},{rng.choice(words)}\\n"
    lines.append(line)
    n += len(line)
block = "".join(lines).encode()[: 1 << 20]
with open(dest, "wb") as out:
    left = size
    while left > 0:
        chunk = block if kind == "compressible" else os.urandom(1 << 20)
        out.write(chunk[:left])
        left -= len(chunk)
"""


def parse_size(text: str) -> int:
    units = {"Ki": 1024, "Mi": MIB, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def task_command(kind: str, size: int) -> tuple[str, ...]:
    return ("python3", "-c", GENERATOR, kind, str(size), "/workspace/output/data.bin")


def reference(kind: str, size: int, scratch: Path) -> dict:
    """`tar czf` + `cp` of the same output on this machine, timed apart from writing it."""
    out = scratch / "ref-output"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", GENERATOR, kind, str(size), str(out / "data.bin")], check=True)
    archive, copy = scratch / "ref.tar.gz", scratch / "ref-copy.tar.gz"
    t0 = time.monotonic()
    subprocess.run(["tar", "czf", str(archive), "-C", str(scratch), "ref-output"], check=True)
    t1 = time.monotonic()
    subprocess.run(["cp", str(archive), str(copy)], check=True)
    t2 = time.monotonic()
    result = {"tar_s": t1 - t0, "cp_s": t2 - t1, "s": t2 - t0, "archive": archive.stat().st_size}
    for path in (archive, copy):
        path.unlink()
    shutil.rmtree(out)
    return result


class Proxy:
    """Loopback TCP proxy, in a thread of its own, counting bytes node -> master."""

    def __init__(self, target_port: int) -> None:
        self.target, self.port, self.upstream = target_port, free_port(), 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, up_w, True), self._pipe(up_r, writer, False))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await src.read(256 * 1024):
                if count:
                    self.upstream += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


def event_at(stack: DevStack, task_id: str, state: str) -> float:
    """When the node says the task reached ``state`` (its clock: the same machine)."""
    row = stack.conn.execute(
        "SELECT MIN(time_ms) FROM task_events WHERE task_id=? AND state=?", (task_id, state)).fetchone()
    return row[0] / 1000 if row and row[0] else float("nan")


def node_archive(stack: DevStack, task_id: str) -> Path:
    return stack.base / "state" / "tasks" / task_id / "result.tar.gz"


def worker_run(stack: DevStack, kind: str, size: int, cut: bool = False) -> dict:
    """One task through the node; with ``cut``, SIGKILL the daemon at half the upload."""
    proc = psutil.Process(stack.worker.pid)
    rss_before = proc.memory_info().rss
    peak, samples, killed_at = rss_before, 0, None
    task_id = stack.submit(task_command(kind, size), cpus=1.0, memory="256m")
    final = stack.state.result(task_id)
    deadline = time.monotonic() + 600 + size / (10 * MIB)
    next_rss = 0.0
    while not final.exists():
        now = time.monotonic()
        if now > deadline:
            raise SystemExit(f"the result of {task_id} did not arrive; see {stack.base}")
        if now >= next_rss:
            try:
                peak, samples = max(peak, proc.memory_info().rss), samples + 1
            except psutil.NoSuchProcess:
                pass
            next_rss = now + 0.1
        if cut and killed_at is None:
            part, whole = stack.state.result_part(task_id), node_archive(stack, task_id)
            if whole.exists() and part.exists() and part.stat().st_size >= whole.stat().st_size // 2:
                killed_at = part.stat().st_size, whole.stat().st_size
                stack.worker.send_signal(signal.SIGKILL)
                stack.worker.wait(30)
                stack.worker = stack.spawn("worker.log", "run")
                proc = psutil.Process(stack.worker.pid)
        time.sleep(0.02)
    held = time.time()
    stack.wait_done([task_id], 120)  # the row's result_size may be written just after the file
    row = stack.conn.execute("SELECT result_size FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    exited, uploading = event_at(stack, task_id, "exited"), event_at(stack, task_id, "uploading")
    final.unlink()  # the master keeps results; the bench does not need them
    return {"task_id": task_id, "s": held - exited, "archive_s": uploading - exited, "archive": row[0],
            "rss_before": rss_before, "rss_peak": peak, "rss_samples": samples, "killed_at": killed_at}


def run_variant(stack: DevStack, kind: str, size: int, runs: int) -> None:
    scratch = stack.base / "ref"
    refs, works = [], []
    for i in range(runs):
        ref, work = reference(kind, size, scratch), worker_run(stack, kind, size)
        refs.append(ref)
        works.append(work)
        print(f"  run {i + 1}: worker {work['s']:.2f} s (archiving {work['archive_s']:.2f} s, then upload and "
              f"check {work['s'] - work['archive_s']:.2f} s; archive {work['archive'] / MIB:.1f} MiB, daemon RSS "
              f"{work['rss_before'] / MIB:.1f} -> peak {work['rss_peak'] / MIB:.1f} MiB); reference tar czf "
              f"{ref['tar_s']:.2f} s + cp {ref['cp_s']:.2f} s (archive {ref['archive'] / MIB:.1f} MiB); "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    w = statistics.median(r["s"] for r in works)
    r = statistics.median(x["s"] for x in refs)
    growth = max(x["rss_peak"] - x["rss_before"] for x in works)
    print(f"{kind}, {size / MIB:.0f} MiB, median of {runs}: worker {size / MIB / w:.1f} MiB/s ({w:.2f} s exit -> "
          f"master holds it) vs reference tar czf + cp {size / MIB / r:.1f} MiB/s ({r:.2f} s): "
          f"ratio {r / w:.2f}x (goal >= 0.5x); daemon RSS growth at peak <= {growth / MIB:.1f} MiB", flush=True)


def resume_drill(size: int) -> None:
    with DevStack("hivemind-bench-results-cut-", {"HIVEMIND_RESULT_MAX_BYTES": str(4 * size + 64 * MIB),
                                                  "HIVEMIND_LOG_LEVEL": "INFO"}) as stack:
        proxy = Proxy(stack.port)
        # The stack enrolled directly; the daemon now talks through the proxy.
        stack.worker.send_signal(signal.SIGTERM)
        stack.worker.wait(60)
        stack.env["HIVEMIND_MASTER_URL"] = f"127.0.0.1:{proxy.port}"
        stack.worker = stack.spawn("worker.log", "run")
        stack.wait_connected()
        before = proxy.upstream
        work = worker_run(stack, "incompressible", size, cut=True)
        sent = proxy.upstream - before
        if work["killed_at"] is None:
            raise SystemExit("the upload finished before the cut; use a larger --size")
        held, total = work["killed_at"]
        resent = sent - work["archive"]
        resumed = [line for line in (stack.base / "worker.log").read_text().splitlines() if "resuming result" in line]
        print(f"cut: SIGKILL with {held / MIB:.1f} of {total / MIB:.1f} MiB at the master; node -> master bytes "
              f"on the wire {sent / MIB:.2f} MiB for a {work['archive'] / MIB:.2f} MiB archive: re-sent "
              f"{resent / MIB:.2f} MiB = {100 * resent / work['archive']:.2f} % (goal < 10 %; includes gRPC "
              f"framing, telemetry and logs); {resumed[-1].strip() if resumed else 'no resume line logged'}",
              flush=True)
        stack.ok = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1Gi", help="output bytes (1Gi, 256Mi, ...)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variant", choices=("both", *VARIANTS), default="both")
    ap.add_argument("--resume", action="store_true", help="also the SIGKILL-at-half drill")
    ap.add_argument("--resume-only", action="store_true")
    args = ap.parse_args()
    size = parse_size(args.size)
    print(f"load average at start {os.getloadavg()}; cores {os.cpu_count()}", flush=True)
    if not args.resume_only:
        env = {"HIVEMIND_RESULT_MAX_BYTES": str(4 * size + 64 * MIB)}
        with DevStack("hivemind-bench-results-", env) as stack:
            stack.wait_connected()
            for kind in (VARIANTS if args.variant == "both" else (args.variant,)):
                run_variant(stack, kind, size, args.runs)
            stack.ok = True
    if args.resume or args.resume_only:
        resume_drill(size)
    print(f"load average at end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
