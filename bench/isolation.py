"""What each isolation layer costs: plain runc, gVisor (runsc) and runc under
Docker's userns-remap, measured in the same run on PRIVATE engines (never the
shared dockerd), with the product's own hardened container arguments.

Per layer, medians of --runs runs of:
- start: create + start + wait + remove of a container running ``true`` (what a
  task's dispatch pays per task on top of bench/dispatch.py's figures);
- cpu: a pure-Python loop, timed inside the container (a CPU-bound task), and
  cpu wall: the same container's create-to-removal time seen from the host;
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


def one_round(client, workspace: Path, runtime: str) -> dict[str, float]:
    cpu_wall, cpu_out = run_container(client, workspace, runtime, ("python3", "-c", CPU))
    return {
        "start": run_container(client, workspace, runtime, ("true",))[0],
        "cpu": float(cpu_out.splitlines()[-1]),
        "cpu_wall": cpu_wall,  # seen from the host: no trust in the sandbox's clock
        "syscalls": float(run_container(client, workspace, runtime, ("python3", "-c", SYSCALLS))[1].splitlines()[-1]),
    }


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
    samples: dict[str, list[dict[str, float]]] = {layer: [] for layer in layers}
    fresh = not had_dockremap()
    with contextlib.ExitStack() as stack:
        if fresh:
            stack.callback(drop_dockremap)  # last: after the remapped engine has stopped
        stack.callback(shutil.rmtree, workspace, ignore_errors=True)
        plain = stack.enter_context(Engine(config={"runtimes": {"runsc": RUNSC}}))
        plain.load_image(IMAGE)
        targets = {"runc": (plain, ""), "runsc": (plain, "runsc")}
        if "userns" in layers:
            remapped = stack.enter_context(Engine(config={"userns-remap": "default"}))
            remapped.load_image(IMAGE)
            # The task's 65100 is base+65100 on the host: its workspace must be that id's.
            ws = Path(tempfile.mkdtemp(prefix="hivemind-bench-iso-"))
            (ws / "output").mkdir()
            for path in (ws, ws / "output"):
                os.chown(path, remap_base() + 65100, remap_base() + 65100)
            stack.callback(shutil.rmtree, ws, ignore_errors=True)
            targets["userns"] = (remapped, "")
        clients = {layer: stack.enter_context(contextlib.closing(targets[layer][0].client())) for layer in layers}
        spaces = {layer: ws if layer == "userns" else workspace for layer in layers}
        for layer in layers:  # warm each image and runtime once
            run_container(clients[layer], spaces[layer], targets[layer][1], ("true",))
        # Rounds interleave the layers, so a busy moment of the shared host hits all alike.
        for _ in range(args.runs):
            for layer in layers:
                samples[layer].append(one_round(clients[layer], spaces[layer], targets[layer][1]))
    keys = ("start", "cpu", "cpu_wall", "syscalls")
    results = {layer: {k: statistics.median(s[k] for s in runs) for k in keys} for layer, runs in samples.items()}
    base = results.get("runc")
    print(f"{'layer':<8} {'start s':>8} {'cpu s':>7} {'cpu wall s':>10} {'syscalls s':>10}   vs runc: " + ", ".join(keys))
    for layer, r in results.items():
        ratios = "" if base is None else "   " + ", ".join(f"{r[k] / base[k]:.2f}" for k in keys)
        print(f"{layer:<8} {r['start']:>8.3f} {r['cpu']:>7.3f} {r['cpu_wall']:>10.3f} {r['syscalls']:>10.3f}{ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
