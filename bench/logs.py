"""Log throughput and agent memory while a task prints a lot, against the engine.

A dev-master and an enrolled daemon (`hivemind-worker run`) on loopback; each round
runs one task in the real task image that prints ``--total-bytes`` of numbered lines
(100 bytes by default), and, in the same round, the same image, command and
PYTHONUNBUFFERED=1 (which run_task.sh gives every task: a write, and a frame, per
print) in a bare container whose attach stream is read to the end (what `docker run`
attached gets):

- attached: lines/s of the attach stream, first byte to end (the engine's rate);
- node read: lines/s the node read, from the first to the last line's read time
  (the time each stored line carries is the node's read time);
- master stored: lines/s landing in the dev-master's database, first to last;
- the ratios node/attached (goal >= 0.8) and master/node (goal >= 0.8), per round (the sides
  go in alternating order) and of the medians; dockerd's CPU per line on both sides;
- the daemon's RSS before, at peak (sampled every 100 ms) and at the end: "flat"
  means the peak does not grow with the output (try ``--total-bytes 1GiB``: the node's
  spool limit drops lines past it, by design, but every line is still read).

Medians of ``--rounds`` (3). Run as root with Docker and the task image:

    .venv/bin/python bench/logs.py --total-bytes 50e6 --spool-max 1e9   # throughput, all delivered
    .venv/bin/python bench/logs.py --total-bytes 1073741824 --rounds 1 # memory with a 1 GiB printer
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import docker
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hivemind_worker.config import Settings  # noqa: E402
from stack import DevStack  # noqa: E402

IMAGE = os.environ.get("HIVEMIND_TEST_TASK_IMAGE", "hivemind-task-runtime:local")
MIB = 1024**2


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


def engine_cpu() -> float:
    """CPU-seconds of dockerd so far: the engine's share of a round (its log driver and
    attach copies), the same work on both sides."""
    return sum(sum(p.cpu_times()[:2]) for p in psutil.process_iter(["name"]) if p.info["name"] == "dockerd")


def attached_rate(command: tuple[str, ...], lines: int) -> tuple[float, float]:
    """Lines/s of a bare container's attach stream (attached before its start, read
    raw to the end), the same image and command as the task; and dockerd's CPU per line."""
    api = docker.from_env().api
    engine0 = engine_cpu()
    # The task's environment as run_task.sh makes it: PYTHONUNBUFFERED=1, so every print
    # is one write and one frame on the stream, for the engine and for any reader.
    cid = api.create_container(IMAGE, list(command), environment={"PYTHONUNBUFFERED": "1"},
                               host_config=api.create_host_config(
        network_mode="none", cpu_quota=100_000, cpu_period=100_000, mem_limit="512m"))["Id"]
    try:
        response = api._post(api._url("/containers/{0}/attach", cid),
                             params={"stdout": 1, "stderr": 1, "stream": 1}, stream=True)
        api._raise_for_status(response)
        sock = api._get_raw_response_socket(response)
        sock = getattr(sock, "_sock", sock)
        api.start(cid)
        first, newlines = 0.0, 0
        while block := sock.recv(1 << 20):
            first = first or time.monotonic()
            newlines += block.count(b"\n")
        span = time.monotonic() - first
        if newlines < lines:
            raise SystemExit(f"the attached reference read {newlines} of {lines} lines")
        return lines / span, (engine_cpu() - engine0) / lines * 1e6
    finally:
        api.remove_container(cid, force=True)


def node_round(stack: DevStack, command: tuple[str, ...], lines: int, timeout: float) -> dict:
    proc = psutil.Process(stack.worker.pid)
    master = psutil.Process(stack.procs[0].pid)
    cpu0 = sum(proc.cpu_times()[:2]), sum(master.cpu_times()[:2]), engine_cpu()
    rss_before = peak = proc.memory_info().rss
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    task_id = stack.submit(command, cpus=1.0, memory="512m")
    while not stack.done([task_id]):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"the task did not finish; see {stack.base}")
        peak = max(peak, proc.memory_info().rss)
        top = stack.conn.execute("SELECT COALESCE(MAX(last_seq), 0) FROM log_chunks WHERE task_id=?",
                                 (task_id,)).fetchone()[0]
        samples.append((time.monotonic(), top))
        time.sleep(0.1)
    row = stack.conn.execute(
        "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), "
        "SUM(CASE WHEN stream != 'system' THEN last_seq - first_seq + 1 END), "
        "MAX(last_seq), MIN(time_ms), MAX(CASE WHEN stream != 'system' THEN time_ms END), "
        "MAX(CASE WHEN stream != 'system' THEN last_seq END) FROM log_chunks WHERE task_id=?", (task_id,),
    ).fetchone()
    stored, task_lines, top, first_ms, last_ms, last_task_seq = row
    cpu = sum(proc.cpu_times()[:2]) - cpu0[0], sum(master.cpu_times()[:2]) - cpu0[1], engine_cpu() - cpu0[2]
    samples.append((time.monotonic(), top))
    first = next(t for t, seq in samples if seq > 0)
    # The spool limit's marker line comes at the task's end: not throughput.
    last = next(t for t, seq in samples if seq >= last_task_seq)
    return {
        "stored": stored, "gaps": top - stored, "read_lines": lines, "task_lines": task_lines,
        "node_rate": task_lines / max((last_ms - first_ms) / 1000, 1e-3),
        "master_rate": task_lines / max(last - first, 0.1),
        "node_cpu_us": cpu[0] / lines * 1e6, "master_cpu_us": cpu[1] / max(stored, 1) * 1e6,
        "engine_cpu_us": cpu[2] / lines * 1e6,
        "rss_before": rss_before, "rss_peak": peak, "rss_end": proc.memory_info().rss,
        "outcome": stack.conn.execute("SELECT outcome FROM tasks WHERE task_id=?", (task_id,)).fetchone()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-bytes", type=float, default=50e6)
    ap.add_argument("--line-bytes", type=int, default=100)
    ap.add_argument("--spool-max", type=float, default=Settings().log_spool_max_bytes, help="per-task spool limit")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lines = int(args.total_bytes // args.line_bytes)
    command = printer(lines, args.line_bytes)
    print(f"task prints {lines:,} lines of {args.line_bytes} bytes ({args.total_bytes / MIB:,.0f} MiB); "
          f"node spool limit {args.spool_max / MIB:,.0f} MiB; load average {os.getloadavg()[0]:.2f}")
    env = {"HIVEMIND_LOG_SPOOL_MAX_BYTES": str(int(args.spool_max))}
    rounds = []
    with DevStack("hivemind-bench-logs-", env) as stack:
        stack.wait_done([stack.submit(("python3", "-c", "pass"))], 120)  # connected and warm
        for i in range(args.rounds):
            # Which side goes first alternates: a machine whose load drifts favours neither.
            if i % 2:
                r = node_round(stack, command, lines, 600 + lines / 5000)
                ref, engine_ref = attached_rate(command, lines)
            else:
                ref, engine_ref = attached_rate(command, lines)
                r = node_round(stack, command, lines, 600 + lines / 5000)
            r.update(attached=ref, engine_ref_us=engine_ref, node_ratio=r["node_rate"] / ref,
                     master_ratio=r["master_rate"] / r["node_rate"])
            rounds.append(r)
            print(f"round {i + 1}: attached {ref:,.0f} lines/s | node read {r['node_rate']:,.0f} "
                  f"({r['node_ratio']:.2f}x) | master stored "
                  f"{r['master_rate']:,.0f} ({r['master_ratio']:.2f}x; {r['stored']:,} lines, gaps {r['gaps']}, {r['outcome']}) "
                  f"| CPU per line: node {r['node_cpu_us']:.1f} us, master {r['master_cpu_us']:.1f} us, dockerd "
                  f"{r['engine_cpu_us']:.1f} us (attached: {engine_ref:.1f} us) | daemon RSS "
                  f"{r['rss_before'] / MIB:.1f} -> peak {r['rss_peak'] / MIB:.1f} -> end {r['rss_end'] / MIB:.1f} MiB "
                  f"| load {os.getloadavg()[0]:.2f}")
        stack.ok = True

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    attached, node, master = med("attached"), med("node_rate"), med("master_rate")
    print(f"medians of {len(rounds)}: attached {attached:,.0f} lines/s, node read {node:,.0f} lines/s, "
          f"master stored {master:,.0f} lines/s; CPU per line: node {med('node_cpu_us'):.1f} us (whole task: "
          f"read, spool, send, archive), master {med('master_cpu_us'):.1f} us")
    print(f"node read / attached = {node / attached:.2f}, median of the rounds' ratios {med('node_ratio'):.2f} "
          f"(goal >= 0.8); master stored / node read = {master / node:.2f}, median of the rounds' ratios "
          f"{med('master_ratio'):.2f} (goal >= 0.8); dockerd CPU per line {med('engine_cpu_us'):.1f} us "
          f"(attached: {med('engine_ref_us'):.1f} us)")
    print(f"daemon RSS: before {med('rss_before') / MIB:.1f} MiB, peak {med('rss_peak') / MIB:.1f} MiB "
          f"(+{(med('rss_peak') - med('rss_before')) / MIB:.1f}), end {med('rss_end') / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
