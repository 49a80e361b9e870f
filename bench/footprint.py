"""Footprint of the idle worker daemon and the cost of one telemetry sample.

1. Sampling cost: the real collectors on this machine (psutil, NVML - degrading when
   there is no GPU - and the cgroup reader), timed over many calls: the median of one
   ``TelemetryCollector.sample()`` and of one full report step
   (``TelemetryService.sample()``: sample + reward + SQLite ledger + history).
2. The idle daemon: a dev-master and an enrolled node in a temporary directory,
   ``hivemind-worker run`` connected with no task; after a settling period, its
   resident memory and CPU seconds per minute over ``--duration`` seconds.

Goals (issue 5): < 80 MB resident, < 0.3 CPU s per minute idle, < 10 ms per sample.

    .venv/bin/python bench/footprint.py [--duration 120] [--samples 300] [--json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from hivemind_worker.config import Settings
from hivemind_worker.telemetry.collector import TelemetryCollector
from hivemind_worker.telemetry.service import TelemetryService
from stack import DevStack, free_port

GOALS = {"rss_mb": 80.0, "cpu_s_per_min": 0.3, "sample_ms": 10.0}


def sampling_cost(workdir: Path, n: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    collector = TelemetryCollector(workdir, Path("/var/lib/docker"))
    for _ in range(5):
        collector.sample()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        collector.sample()
        times.append((time.perf_counter() - t0) * 1000)
    service = TelemetryService(Settings(state_dir=workdir / "svc", report_interval_s=30), collector=collector)

    async def steps() -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await service.sample()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    report_times = asyncio.run(steps())
    service.close()
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]  # noqa: E731
    return {
        "samples": n,
        "sample_ms_median": round(statistics.median(times), 3),
        "sample_ms_p95": round(q(times, 0.95), 3),
        "report_step_ms_median": round(statistics.median(report_times), 3),
        "report_step_ms_p95": round(q(report_times, 0.95), 3),
        "gpu": collector.gpu.unavailable_reason or f"{len(collector.gpu.sample())} GPU(s)",
    }


def idle_daemon(duration: float, settle: float) -> dict:
    monitor_port = free_port()
    daemon = DevStack("hivemind-footprint-", {"HIVEMIND_MONITOR_ENABLED": "true", "HIVEMIND_MONITOR_PORT": str(monitor_port),
                                              "HIVEMIND_LOG_LEVEL": "INFO"})
    with daemon:
        daemon.wait_connected()
        worker = daemon.worker
        proc = psutil.Process(worker.pid)
        time.sleep(settle)  # start-up (imports, enrollment check, first report) is not idle
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        rss = []
        while time.monotonic() - t0 < duration:
            rss.append(proc.memory_info().rss)
            time.sleep(min(5.0, max(0.1, duration - (time.monotonic() - t0))))
        cpu1 = proc.cpu_times()
        elapsed = time.monotonic() - t0
        full = proc.memory_full_info()
        cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        try:
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=2).read()
            monitor = "serving"
        except OSError:
            monitor = "not serving (not wired into the daemon yet?)"
        result = {
            "duration_s": round(elapsed, 1),
            "rss_mb_max": round(max(rss) / 2**20, 1),
            "rss_mb_end": round(full.rss / 2**20, 1),
            "uss_mb_end": round(full.uss / 2**20, 1),
            "cpu_s": round(cpu_s, 3),
            "cpu_s_per_min": round(cpu_s / (elapsed / 60), 3),
            "threads": proc.num_threads(),
            "monitor": monitor,
            "still_running": worker.poll() is None,
        }
        daemon.ok = True
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="idle measurement window, seconds")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after connecting before measuring")
    parser.add_argument("--samples", type=int, default=300, help="telemetry samples to time")
    parser.add_argument("--no-daemon", action="store_true", help="only time the sampling")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="hivemind-footprint-"))
    try:
        result = {"sampling": sampling_cost(base / "ws", args.samples)}
        if not args.no_daemon:
            result["idle_daemon"] = idle_daemon(args.duration, args.settle)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    checks = {"sample_ms": result["sampling"]["sample_ms_median"]}
    if "idle_daemon" in result:
        checks["rss_mb"] = result["idle_daemon"]["rss_mb_max"]
        checks["cpu_s_per_min"] = result["idle_daemon"]["cpu_s_per_min"]
    result["goals"] = {k: {"value": v, "goal": GOALS[k], "met": v < GOALS[k]} for k, v in checks.items()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        s = result["sampling"]
        print(f"telemetry sample      median {s['sample_ms_median']} ms, p95 {s['sample_ms_p95']} ms "
              f"over {s['samples']} ({s['gpu']})")
        print(f"full report step      median {s['report_step_ms_median']} ms, p95 {s['report_step_ms_p95']} ms")
        if "idle_daemon" in result:
            d = result["idle_daemon"]
            print(f"idle daemon           {d['duration_s']} s: RSS max {d['rss_mb_max']} MB (USS {d['uss_mb_end']} MB), "
                  f"{d['cpu_s_per_min']} CPU s/min, {d['threads']} threads, monitor {d['monitor']}")
        for key, g in result["goals"].items():
            print(f"goal {key:<14} {g['value']:>8} < {g['goal']:<6} {'met' if g['met'] else 'MISSED'}")
    return 1 if args.check and not all(g["met"] for g in result["goals"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
