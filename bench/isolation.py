"""What each isolation layer costs: plain runc, gVisor (runsc) and runc under
Docker's userns-remap, measured in the same run on PRIVATE engines (never the
shared dockerd), with the product's own hardened container arguments.

Per layer, medians of --runs runs of:
- start: create + start + wait + remove of a container running ``true`` (what a
  task's dispatch pays per task on top of bench/dispatch.py's figures);
- cpu: a pure-Python loop, timed inside the container (a CPU-bound task);
- syscalls: 200k stat() calls, timed inside the container (a file-heavy task);
and the ratio of each against runc. Needs root, `runsc` (apt-get install runsc) and
the task image on the shared engine (copied in through a cached tar).

userns-remap "default" makes dockerd create the `dockremap` user and its subordinate
id ranges; the bench removes them again if they were not there before.

    .venv/bin/python bench/isolation.py              # 7 runs per layer
    .venv/bin/python bench/isolation.py --runs 3 --layers runc,runsc
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivemind_worker.runtime.spec import ContainerSpec, create_kwargs  # noqa: E402
from hivemind_worker.tasks.model import NetworkPolicy  # noqa: E402
from stack import IMAGE  # noqa: E402

CPU = "import time; t = time.perf_counter(); sum(i * i for i in range(3_000_000)); print(time.perf_counter() - t)"
SYSCALLS = "import os, time; t = time.perf_counter(); [os.stat('/') for _ in range(200_000)]; print(time.perf_counter() - t)"
RUNSC = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}


def run_container(client, workspace: Path, runtime: str, command: tuple[str, ...]) -> tuple[float, str]:
    spec = ContainerSpec(
        task_id=f"bench-iso-{uuid.uuid4().hex[:8]}", node_id="bench", image=IMAGE, command=command, env={},
        workspace=workspace, cpu_millicores=1000, memory_bytes=512 * 1024**2, pids_limit=64,
        gpu_device_ids=(), network=NetworkPolicy.NONE, runtime=runtime,
    )
    kwargs = create_kwargs(spec)
    started = time.perf_counter()
    container = client.containers.create(**kwargs)
    try:
        container.start()
        code = container.wait()["StatusCode"]
        out = container.logs(stdout=True, stderr=False).decode().strip()
        if code != 0:
            raise RuntimeError(f"{runtime or 'runc'}: exit {code}: {container.logs().decode()[-500:]}")
    finally:
        container.remove(force=True)
    return time.perf_counter() - started, out


def measure(client, workspace: Path, runtime: str, runs: int) -> dict[str, float]:
    run_container(client, workspace, runtime, ("true",))  # warm the image and the runtime
    start, cpu, sys_ = [], [], []
    for _ in range(runs):
        start.append(run_container(client, workspace, runtime, ("true",))[0])
        cpu.append(float(run_container(client, workspace, runtime, ("python3", "-c", CPU))[1].splitlines()[-1]))
        sys_.append(float(run_container(client, workspace, runtime, ("python3", "-c", SYSCALLS))[1].splitlines()[-1]))
    return {"start": statistics.median(start), "cpu": statistics.median(cpu), "syscalls": statistics.median(sys_)}


def had_dockremap() -> bool:
    return subprocess.run(["getent", "passwd", "dockremap"], capture_output=True).returncode == 0


def remap_base() -> int:
    for line in Path("/etc/subuid").read_text().splitlines():
        name, start, _ = line.split(":")
        if name == "dockremap":
            return int(start)
    raise RuntimeError("userns-remap is on but /etc/subuid has no dockremap range")


def drop_dockremap() -> None:
    subprocess.run(["userdel", "dockremap"], capture_output=True)
    subprocess.run(["groupdel", "dockremap"], capture_output=True)
    for name in ("/etc/subuid", "/etc/subgid"):
        path = Path(name)
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if not line.startswith("dockremap:")]
            path.write_text("".join(line + "\n" for line in kept))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--layers", default="runc,runsc,userns")
    args = parser.parse_args()
    from tests.support.engine import Engine

    layers = args.layers.split(",")
    workspace = Path(tempfile.mkdtemp(prefix="hivemind-bench-iso-"))
    (workspace / "output").mkdir()
    os.chown(workspace, 65100, 65100)
    os.chown(workspace / "output", 65100, 65100)
    results: dict[str, dict[str, float]] = {}
    try:
        with Engine(config={"runtimes": {"runsc": RUNSC}}) as engine:
            engine.load_image(IMAGE)
            client = engine.client()
            for layer in [l for l in layers if l in ("runc", "runsc")]:
                results[layer] = measure(client, workspace, "runsc" if layer == "runsc" else "", args.runs)
            client.close()
        if "userns" in layers:
            fresh = not had_dockremap()
            try:
                with Engine(config={"userns-remap": "default"}) as engine:
                    engine.load_image(IMAGE)
                    # The task's 65100 is base+65100 on the host: the workspace must be that id's.
                    base = remap_base()
                    os.chown(workspace, base + 65100, base + 65100)
                    os.chown(workspace / "output", base + 65100, base + 65100)
                    client = engine.client()
                    results["userns"] = measure(client, workspace, "", args.runs)
                    client.close()
            finally:
                if fresh:
                    drop_dockremap()
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    base = results.get("runc")
    print(f"{'layer':<8} {'start s':>9} {'cpu s':>8} {'syscalls s':>11}   ratios vs runc (start, cpu, syscalls)")
    for layer, r in results.items():
        ratios = "" if base is None else "   " + ", ".join(f"{r[k] / base[k]:.2f}" for k in ("start", "cpu", "syscalls"))
        print(f"{layer:<8} {r['start']:>9.3f} {r['cpu']:>8.3f} {r['syscalls']:>11.3f}{ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
