"""Footprint of the idle worker daemon, against references from the same run, and the
cost of one telemetry sample.

1. The idle daemon (issue 13: <= 55 MB resident): a dev-master and an enrolled node in
   a temporary directory, ``hivemind-worker run`` connected with no task, the monitor
   serving, JSON logs as under systemd; after a settling period, its resident memory
   (RSS, and USS/PSS: what is its own, what it shares) and CPU seconds per minute over
   ``--duration`` seconds. ``--runs`` daemons one after another: medians. Then the same
   daemon runs one trivial task and is idle again: what the first task leaves loaded
   (docker-py's client, cryptography for the signed usage record) stays for the
   process's life, so that figure is reported next to the fresh one.
2. References, each a live process measured the same way in the same run: a bare
   ``python3 -c pass`` (the interpreter alone) and the bare import of grpcio, docker,
   psutil, pynvml, starlette and uvicorn (the libraries the issue names as the floor).
3. What each MB is: the daemon's mappings (/proc/PID/smaps: each shared library,
   the heap and anonymous memory), and the import cost of every package it loaded
   (its imports replayed in a fresh interpreter in the daemon's order, RSS after each:
   what is left of the daemon's RSS beyond that is its running state - threads, the
   gRPC channel, the monitor's server, SQLite, objects made at run time).
4. Sampling cost: the real collectors on this machine (psutil, NVML - degrading when
   there is no GPU - and the cgroup reader), timed over many calls.

Goals: idle RSS <= 55 MB (issue 13), < 0.3 CPU s per minute idle, < 10 ms per sample (issue 5).

    .venv/bin/python bench/footprint.py [--runs 3] [--duration 60] [--samples 300] [--json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from hivemind_worker.config import Settings
from hivemind_worker.telemetry.collector import TelemetryCollector
from hivemind_worker.telemetry.service import TelemetryService
from stack import DevStack, free_port

GOALS = {"rss_mb": 55.0, "cpu_s_per_min": 0.3, "sample_ms": 10.0}
MB = 2**20
BARE_IMPORT = "import grpc, docker, psutil, pynvml, starlette, uvicorn"
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)$")


def memory(pid: int) -> dict:
    full = psutil.Process(pid).memory_full_info()
    return {"rss_mb": round(full.rss / MB, 1), "uss_mb": round(full.uss / MB, 1), "pss_mb": round(full.pss / MB, 1)}


def reference(code: str, settle: float) -> dict:
    """A live interpreter that ran ``code`` and waits: its memory once settled."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nimport sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(settle)
        return memory(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(10)


def mappings(pid: int) -> Counter:
    """Resident KiB of each mapping of ``pid``, by file (or [heap], [anon], [stack])."""
    out: Counter = Counter()
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
            name = fields[5] if len(fields) > 5 else "[anon]"
            name = "[stack]" if name.startswith("[stack") else name
        elif fields[0] == "Rss:":
            out[name] += int(fields[1])
    return out


def imports_in_order(log: str) -> list[str]:
    """Every module the daemon imported (``-X importtime`` lines), in the order they
    finished: a package's modules before the package, so each step costs its own."""
    return [m.group(2) for line in log.splitlines() if (m := _IMPORT_LINE.match(line))]


def import_costs(modules: list[str]) -> list[tuple[str, float, str]]:
    """(package, MB, detail) for the daemon's imports replayed in a fresh interpreter;
    the standard library is one row, its largest modules named in the detail."""
    script = (
        "import importlib, json, sys, psutil\n"
        "p = psutil.Process(); out = [('python + psutil', p.memory_info().rss)]\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        continue\n"
        "    out.append((name, p.memory_info().rss))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, json.dumps(modules)], capture_output=True, text=True,
                          timeout=120, check=True)
    steps = json.loads(done.stdout)
    costs: Counter = Counter({"python + psutil (the measuring script's own)": steps[0][1] / MB})
    stdlib: Counter = Counter()
    for (_, before), (name, after) in zip(steps, steps[1:]):
        top = name.split(".")[0]
        if top.lstrip("_") in sys.stdlib_module_names or top in sys.stdlib_module_names:
            stdlib[top.lstrip("_")] += (after - before) / MB
        else:
            costs[_package(name)] += (after - before) / MB
    costs["standard library"] = sum(stdlib.values())
    detail = {"standard library": ", ".join(f"{k} {v:.1f}" for k, v in stdlib.most_common(6))}
    return [(k, round(v, 1), detail.get(k, "")) for k, v in costs.most_common() if round(v, 1) >= 0.1]


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "hivemind_worker" and len(parts) > 1 else parts[0]


def idle_daemon(duration: float, settle: float, after_task: bool) -> dict:
    monitor_port = free_port()
    daemon = DevStack("hivemind-footprint-", {
        "HIVEMIND_MONITOR_ENABLED": "true", "HIVEMIND_MONITOR_PORT": str(monitor_port),
        "HIVEMIND_LOG_LEVEL": "INFO", "HIVEMIND_LOG_FORMAT": "json",  # as under systemd
        "PYTHONPROFILEIMPORTTIME": "1",  # what it imported, for the breakdown (stderr only)
    })
    with daemon:
        daemon.wait_connected()
        worker = daemon.worker
        proc = psutil.Process(worker.pid)
        time.sleep(settle)  # start-up (imports, enrollment check, first report) is not idle
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=5).read()  # serving, or raises
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        rss = []
        while time.monotonic() - t0 < duration:
            rss.append(proc.memory_info().rss)
            time.sleep(min(5.0, max(0.1, duration - (time.monotonic() - t0))))
        cpu1 = proc.cpu_times()
        elapsed = time.monotonic() - t0
        cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        result = {
            **memory(worker.pid),
            "rss_mb_max": round(max(rss) / MB, 1),
            "cpu_s_per_min": round(cpu_s / (elapsed / 60), 3),
            "threads": proc.num_threads(),
            "mappings": mappings(worker.pid),
            "imports": imports_in_order((daemon.base / "worker.log").read_text(errors="replace")),
            "still_running": worker.poll() is None,
        }
        if after_task:
            task_id = daemon.submit(("true",))
            rows = daemon.wait_done([task_id], timeout=120)
            time.sleep(settle)
            grown = mappings(worker.pid) - result["mappings"]  # what the task left behind, by mapping
            result["after_task"] = {**memory(worker.pid), "outcome": rows[0]["outcome"],
                                    "grown_mb": {k: round(v / 1024, 1) for k, v in grown.most_common(6)}}
        daemon.ok = True
        return result


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
        "gpu": collector.gpu.unavailable_reason or f"{len(collector.gpu.sample())} GPU(s)",
    }


def measure(runs: int, duration: float, settle: float, after_task: bool) -> dict:
    daemons, pythons, bares = [], [], []
    for _ in range(runs):  # interleaved: a busy moment of the machine hits all three
        pythons.append(reference("pass", settle=3))
        bares.append(reference(BARE_IMPORT, settle=3))
        daemons.append(idle_daemon(duration, settle, after_task))
    med = lambda rows, key: round(statistics.median(r[key] for r in rows), 1)  # noqa: E731
    last = daemons[-1]
    return {
        "runs": runs,
        "daemon": {k: med(daemons, k) for k in ("rss_mb", "rss_mb_max", "uss_mb", "pss_mb")}
        | {"cpu_s_per_min": round(statistics.median(d["cpu_s_per_min"] for d in daemons), 3),
           "threads": last["threads"], "rss_mb_each": [d["rss_mb_max"] for d in daemons],
           "all_ran": all(d["still_running"] for d in daemons)},
        "after_task": {k: med([d["after_task"] for d in daemons], k) for k in ("rss_mb", "uss_mb", "pss_mb")}
        | {"outcomes": [d["after_task"]["outcome"] for d in daemons], "grown_mb": last["after_task"]["grown_mb"]}
        if after_task else None,
        "python_pass": {k: med(pythons, k) for k in ("rss_mb", "uss_mb", "pss_mb")},
        "bare_import": {k: med(bares, k) for k in ("rss_mb", "uss_mb", "pss_mb")},
        "mappings_mb": {name: round(kib / 1024, 1) for name, kib in last["mappings"].most_common(14)},
        "import_mb": import_costs(last["imports"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="idle daemons measured (medians)")
    parser.add_argument("--duration", type=float, default=60.0, help="idle measurement window, seconds")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after connecting before measuring")
    parser.add_argument("--samples", type=int, default=300, help="telemetry samples to time")
    parser.add_argument("--no-daemon", action="store_true", help="only time the sampling")
    parser.add_argument("--no-task", action="store_true", help="skip the idle-after-one-task figure")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="hivemind-footprint-"))
    try:
        result = {"sampling": sampling_cost(base / "ws", args.samples)}
        if not args.no_daemon:
            result["idle"] = measure(args.runs, args.duration, args.settle, not args.no_task)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    checks = {"sample_ms": result["sampling"]["sample_ms_median"]}
    if "idle" in result:
        checks["rss_mb"] = result["idle"]["daemon"]["rss_mb_max"]
        checks["cpu_s_per_min"] = result["idle"]["daemon"]["cpu_s_per_min"]
    result["goals"] = {k: {"value": v, "goal": GOALS[k], "met": v <= GOALS[k]} for k, v in checks.items()}
    print(json.dumps(result, indent=2) if args.json else report(result), flush=True)
    return 1 if args.check and not all(g["met"] for g in result["goals"].values()) else 0


def report(result: dict) -> str:
    s = result["sampling"]
    lines = [f"telemetry sample      median {s['sample_ms_median']} ms, p95 {s['sample_ms_p95']} ms over "
             f"{s['samples']} ({s['gpu']}); full report step median {s['report_step_ms_median']} ms"]
    if "idle" in result:
        i = result["idle"]
        d, py, bare = i["daemon"], i["python_pass"], i["bare_import"]
        lines += [
            f"medians of {i['runs']} runs, same run      RSS MB   USS MB   PSS MB",
            f"  idle daemon (max RSS) {d['rss_mb_max']:>9} {d['uss_mb']:>8} {d['pss_mb']:>8}   "
            f"each {d['rss_mb_each']}, {d['cpu_s_per_min']} CPU s/min, {d['threads']} threads",
            *([f"  idle after one task   {a['rss_mb']:>9} {a['uss_mb']:>8} {a['pss_mb']:>8}   "
               f"(task outcomes {a['outcomes']}); grown (last run): "
               + ", ".join(f"{Path(k).name} {v}" for k, v in a["grown_mb"].items())] if (a := i["after_task"]) else []),
            f"  bare import           {bare['rss_mb']:>9} {bare['uss_mb']:>8} {bare['pss_mb']:>8}   ({BARE_IMPORT})",
            f"  python3 -c pass       {py['rss_mb']:>9} {py['uss_mb']:>8} {py['pss_mb']:>8}",
            f"  daemon / bare import  {d['rss_mb_max'] / bare['rss_mb']:.2f}x RSS; daemon - python = "
            f"{d['rss_mb_max'] - py['rss_mb']:.1f} MB",
            "the daemon's resident memory by mapping (last run), MB:",
            *[f"  {mb:>6}  {name}" for name, mb in i["mappings_mb"].items()],
            "its imports replayed in a fresh interpreter, RSS added by each package, MB:",
            *[f"  {mb:>6}  {name}{f' ({detail})' if detail else ''}" for name, mb, detail in i["import_mb"]],
            f"  {round(sum(row[1] for row in i['import_mb']), 1):>6}  in all (packages under 0.1 MB left out); the rest of "
            "the daemon's RSS is its running state",
        ]
    for key, g in result["goals"].items():
        lines.append(f"goal {key:<14} {g['value']:>8} <= {g['goal']:<6} {'met' if g['met'] else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
