"""Hostile tasks against the agent itself, on a real engine: a task that leaves a
sparse 4 TiB file in its output, and a bundle that lists 200k entries, both end
fast with a clear reason, and the agent's memory (traced in this process, which is
the agent) stays bounded."""

from __future__ import annotations

import asyncio
import json
import tarfile
import time
import tracemalloc

import pytest

from tests.support.localhost import LocalTaskHost, sha256_file
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus
from tests.unit.tasks.test_bundle_limits import craft

pytestmark = pytest.mark.docker
MiB = 1024**2


async def run_one(settings, runtime, host, node_id, request: TaskRequest, timeout: float = 90) -> tuple[float, int]:
    """Run one task to its end; (seconds, peak bytes traced while it ran)."""
    m = TaskManager(settings, runtime, host, node_id, capacity=Resources(1000, 1024 * MiB), sampler=None)
    host.manager = m
    await m.start()
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        await m.assign(request)
        end = t0 + timeout
        while m.held_tasks():
            assert time.monotonic() < end, m.snapshot()
            await asyncio.sleep(0.05)
        return time.monotonic() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await m.close()


async def test_a_sparse_4_tib_output_file_fails_the_result_fast(tmp_path, settings, docker_runtime, node_id) -> None:
    host = LocalTaskHost(tmp_path / "results")
    script = 'truncate -s 4T "$HIVEMIND_OUTPUT_DIR/x" && echo made a 4 TiB file'
    request = TaskRequest("t-sparse", command=("sh", "-c", script), resources=Resources(250, 128 * MiB))
    seconds, peak = await run_one(settings, docker_runtime, host, node_id, request)
    final = host.final_event("t-sparse")
    assert final.status is TaskStatus.FAILED, final
    assert "result not delivered: 'output/x' is 4398046511104 bytes" in final.reason
    with tarfile.open(host.results["t-sparse"]) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert sorted(files) == ["exit.json", "logs.txt"] and b"made a 4 TiB file" in files["logs.txt"]
    assert json.loads(files["exit.json"])["output_dropped"] is True
    assert seconds < 60 and peak < 64 * MiB, (seconds, peak)
    print(f"\nsparse 4 TiB output: task ended FAILED in {seconds:.1f} s, agent peak traced {peak} B")


async def test_a_bundle_listing_200k_entries_is_refused_fast(tmp_path, settings, docker_runtime, node_id) -> None:
    zip_path = craft(tmp_path / "many.zip", 200_000, zip64=True)
    host = LocalTaskHost(tmp_path / "results", {"t-many": zip_path})
    request = TaskRequest("t-many", resources=Resources(250, 128 * MiB),
                          bundle_size=zip_path.stat().st_size, bundle_sha256=sha256_file(zip_path))
    seconds, peak = await run_one(settings, docker_runtime, host, node_id, request)
    final = host.final_event("t-many")
    assert final.status is TaskStatus.FAILED, final
    assert f"bundle lists 200000 entries, more than the limit of {settings.bundle_max_files} files" in final.reason
    assert seconds < 30 and peak < 64 * MiB, (seconds, peak)
    assert [c for c in await docker_runtime.list_managed() if c.node_id == node_id] == []
    print(f"\n200k-entry bundle ({zip_path.stat().st_size} bytes): refused in {seconds:.1f} s, agent peak traced {peak} B")


async def test_tasks_cannot_dump_core(tmp_path, settings, docker_runtime, node_id) -> None:
    host = LocalTaskHost(tmp_path / "results")
    script = 'echo "soft $(ulimit -c) hard $(ulimit -H -c)"; ulimit -c unlimited || echo "cannot raise"'
    request = TaskRequest("t-core", command=("sh", "-c", script), resources=Resources(250, 128 * MiB))
    await run_one(settings, docker_runtime, host, node_id, request)
    texts = [r.text for r in host.lines["t-core"]]
    assert "soft 0 hard 0" in texts and "cannot raise" in texts, texts
