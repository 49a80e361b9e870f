"""A node that accepts only small messages (max_message_bytes = 64 KiB, the least the
settings allow) still gets every byte both ways: its bundle arrives in chunks it can
receive, its result leaves in chunks it may send, its log lines in batches under the
limit; nothing is refused over and over."""

from __future__ import annotations

import hashlib
import os
import tarfile

from tests.integration.e2e.test_tasks_e2e import connected_node, submit

TASK = """\
import os, shutil
out = os.environ['HIVEMIND_OUTPUT_DIR']
shutil.copy('blob.bin', os.path.join(out, 'blob.bin'))
with open(os.path.join(out, 'more.bin'), 'wb') as fh:
    fh.write(os.urandom(1024 * 1024))
for i in range(3000):
    print(f'line {i:05d} ' + 'y' * 90)
print('z' * 100_000)
"""


def run_task(master, node, task_image, tmp_path, blob: bytes) -> tuple[list[str], tarfile.TarFile]:
    """Submit TASK with ``blob`` in its bundle and wait: its output lines and result
    archive, after checking that it ended well and every numbered line came once."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "blob.bin").write_bytes(blob)
    (bundle / "main.py").write_text(TASK)
    out = tmp_path / "out"
    proc = submit(master, str(bundle), "--image", task_image, "--cpus", "0.5", "--memory", "256m",
                  "--wait", "--output", str(out))
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr + node.log.read_text()[-3000:]
    lines = stdout.splitlines()
    assert [l for l in lines if l.startswith("line ")] == [f"line {i:05d} " + "y" * 90 for i in range(3000)]
    [archive] = list(out.glob("*.tar.gz"))
    return lines, tarfile.open(archive)


def test_small_message_limit_moves_bundle_result_and_logs(devmaster, make_node, task_image, tmp_path):
    node = connected_node(devmaster, make_node, max_message_bytes=65536)
    blob = os.urandom(300 * 1024)  # random: the zip cannot shrink it under one message
    lines, tar = run_task(devmaster, node, task_image, tmp_path, blob)
    [long_line] = [l for l in lines if l.startswith("zzz")]
    assert long_line.endswith("[hivemind: line truncated]") and len(long_line) < 65536
    with tar:
        got = tar.extractfile("output/blob.bin").read()
        assert len(tar.extractfile("output/more.bin").read()) == 1024 * 1024
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    assert node.proc.poll() is None
    assert "RESOURCE_EXHAUSTED" not in node.log.read_text()


def test_a_master_with_a_small_limit_gets_everything_from_a_default_node(make_node, task_image, tmp_path):
    """The other way round: the master takes at most 64 KiB a message and says so in its
    welcome; a node left at its 4 MiB default sends under the master's limit."""
    from tests.conftest import free_port
    from tests.support.stack import DevMaster

    master = DevMaster(tmp_path / "master", free_port(), tmp_path / "master.log", ("--max-message-bytes", "65536"))
    master.start()
    try:
        node = connected_node(master, make_node)
        _, tar = run_task(master, node, task_image, tmp_path, os.urandom(40 * 1024))
        with tar:
            assert len(tar.extractfile("output/more.bin").read()) == 1024 * 1024
        assert "RESOURCE_EXHAUSTED" not in node.log.read_text()
    finally:
        master.stop()
