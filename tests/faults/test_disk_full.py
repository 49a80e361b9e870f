"""Drill 3: the node's state directory on a 96 MB tmpfs, and a task that writes 400 MB
into its output. The task must end with a `disk limit` or `node disk full` reason
(not wedge in a retry loop), its workspace freed, the daemon alive, and the next task
must run once the space is back."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from tests.faults.drill import (
    assert_agree, assert_healthy, assert_lines_once, connect, describe, log_lines, result_archive, wait_final,
)
from tests.support.stack import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.root, pytest.mark.timeout(420)]

TMPFS_MB = 96

# Writes 400 MB in 4 MB chunks. A full disk does not stop it: it retries, as a
# stubborn real program would, so only the node can end it (after 120 s it gives up
# and exits 0, which the drill reports as "the node never stopped it").
FILLER = """\
import errno, os, sys, time
print("line start", flush=True)
chunk = os.urandom(4 << 20)
path = os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "fill.bin")
written, said, deadline = 0, False, time.monotonic() + 120
with open(path, "wb", buffering=0) as fh:
    while written < (400 << 20) and time.monotonic() < deadline:
        try:
            written += fh.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            if not said:
                print("line ENOSPC", flush=True)
                said = True
            time.sleep(0.2)
print(f"wrote {written >> 20} MB", flush=True)
"""


def used_mb(path) -> float:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / (1 << 20)


@pytest.fixture
def small_state(make_node, task_image):
    # Watermarks sized for this small disk, as its operator would set them (the
    # defaults, 512 and 128 MiB free, would rightly admit nothing here).
    node = make_node("small", report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=5, task_image=task_image,
                     disk_min_free_bytes=16 << 20, disk_hard_min_free_bytes=8 << 20)
    node.state_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(node.state_dir)],
                   check=True, timeout=30)
    try:
        yield node
    finally:
        node.stop()
        subprocess.run(["umount", "-l", str(node.state_dir)], check=False, timeout=30)


def test_task_filling_the_state_file_system(master, small_state, submit_wait, tmp_path):
    node = small_state
    connect(master, node)
    baseline = used_mb(node.state_dir)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "main.py").write_text(FILLER)
    waiter = submit_wait(str(tmp_path / "bundle"), "--cpus", "0.5", "--memory", "256m")
    task_id = waiter.task_id

    row = wait_final(master, task_id, 240, node)
    assert row["outcome"] == "failed" and row["reason"].startswith(("disk limit", "node disk full")), \
        describe(master, task_id, node)
    code, _, stderr = waiter.finish(15)
    assert code == 7 and ("disk limit" in stderr or "node disk full" in stderr), stderr[-2000:]
    # What fits comes back: the exit record and the logs, whole.
    with tarfile.open(result_archive(master, task_id)) as tar:
        names = tar.getnames()
    assert "exit.json" in names and "logs.txt" in names, names
    rows = log_lines(master, task_id)
    assert [r["text"] for r in rows if r["text"] == "line start"] == ["line start"], "the first line, once"
    assert_lines_once(master, task_id, [r["text"] for r in rows if r["text"].startswith("line ")])

    # The workspace is freed and the space is back.
    wait_for(lambda: not (node.state_dir / "tasks" / task_id).exists(), 60, "the task's directory to be removed")
    wait_for(lambda: used_mb(node.state_dir) < baseline + 16, 60,
             f"the space to come back (used {used_mb(node.state_dir):.0f} MB, {baseline:.0f} MB before the task)")
    assert_healthy(master, node)
    assert_agree(master, node)
