"""Tasks end to end: dev-master -> worker daemon -> real Docker -> results back,
through crashes of either side."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path


from tests.support.stack import wait_for


def submit(master, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hivemind_worker", "submit", *args, "--state-dir", str(master.state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def connected_node(devmaster, make_node, **settings):
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=2, **settings)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(lambda: any(r["node_id"] == node_id and r["session"] == "connected" for r in devmaster.nodes()),
             30, "the worker's session")
    return node


def make_wheel(dest: Path) -> str:
    """A tiny pure-Python wheel, built here, so the task installs it offline."""
    import zipfile

    name = "hm_greeting-1.0-py3-none-any.whl"
    with zipfile.ZipFile(dest / name, "w") as whl:
        whl.writestr("hm_greeting/__init__.py", "def greet(who):\n    return f'greetings, {who}'\n")
        whl.writestr("hm_greeting-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: hm-greeting\nVersion: 1.0\n")
        whl.writestr("hm_greeting-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("hm_greeting-1.0.dist-info/RECORD", "")
    return name


def test_bundle_with_requirements_runs_and_result_comes_back(devmaster, make_node, task_image, tmp_path):
    node = connected_node(devmaster, make_node)
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    make_wheel(bundle / "wheels")
    (bundle / "requirements.txt").write_text("hm-greeting==1.0\n")
    (bundle / "data.txt").write_text("world\n")
    (bundle / "main.py").write_text(
        "import os, hm_greeting\n"
        "who = open('data.txt').read().strip()\n"
        "print(hm_greeting.greet(who))\n"
        "open(os.path.join(os.environ['HIVEMIND_OUTPUT_DIR'], 'answer.txt'), 'w').write(hm_greeting.greet(who))\n"
    )
    out = tmp_path / "out"
    proc = submit(devmaster, str(bundle), "--image", task_image, "--cpus", "0.5", "--memory", "256m", "--wait", "--output", str(out))
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "greetings, world" in stdout
    [archive] = list(out.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert tar.extractfile("output/answer.txt").read() == b"greetings, world"
        exit_record = json.load(tar.extractfile("exit.json"))
    assert "logs.txt" in names
    assert exit_record["exit_code"] == 0
    assert node.proc.poll() is None


COUNTER = """\
import os, sys, time
n = int(os.environ.get("LINES", "60"))
for i in range(1, n + 1):
    print(f"line {i}", flush=True)
    time.sleep(float(os.environ.get("PAUSE", "0.1")))
with open(os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "done.txt"), "w") as fh:
    fh.write(str(n))
"""


def test_agent_sigkill_mid_task_delivers_complete_logs_and_one_result(devmaster, make_node, task_image, tmp_path):
    node = connected_node(devmaster, make_node)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "main.py").write_text(COUNTER)
    out = tmp_path / "out"
    proc = submit(devmaster, str(bundle), "--image", task_image, "--env", "LINES=80", "--env", "PAUSE=0.1",
                  "--wait", "--output", str(out))
    wait_for(lambda: node.log.exists() and "running" in " ".join(t.get("state", "") for t in json.loads(devmaster.run("tasks", "--json"))),
             120, "the task to run")
    time.sleep(2.5)
    node.proc.kill()  # SIGKILL: no drain, no goodbye
    node.proc.wait(10)
    time.sleep(1.5)  # the task keeps printing while no agent watches
    node.start()
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    lines = [l for l in stdout.splitlines() if l.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, 81)], "every line once, in order"
    results = list(out.glob("*.tar.gz"))
    assert len(results) == 1
    with tarfile.open(results[0]) as tar:
        assert tar.extractfile("output/done.txt").read() == b"80"
    assert len(list((devmaster.state / "results").glob("*.tar.gz"))) == 1


def test_master_killed_mid_upload_receives_the_whole_result(devmaster, make_node, task_image, tmp_path):
    node = connected_node(devmaster, make_node)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "main.py").write_text(
        "import os, hashlib\n"
        "data = os.urandom(96 * 1024 * 1024)\n"  # incompressible: the upload takes a while
        "open(os.path.join(os.environ['HIVEMIND_OUTPUT_DIR'], 'blob.bin'), 'wb').write(data)\n"
        "print('sha256', hashlib.sha256(data).hexdigest())\n"
    )
    task_id = submit(devmaster, str(bundle), "--image", task_image, "--memory", "512m").communicate(timeout=60)[0].strip().split()[-1]
    results = devmaster.state / "results"
    wait_for(lambda: any(p.stat().st_size > 0 for p in results.glob("*.part")), 180, "the upload to start", interval=0.01)
    devmaster.kill()
    partial = sum(p.stat().st_size for p in results.glob("*.part"))
    assert 0 < partial < 96 * 1024 * 1024, "killed mid-upload"
    time.sleep(1)
    devmaster.start()
    wait_for(lambda: list(results.glob("*.tar.gz")), 120, "the whole result after the restart")

    def state():
        return {t["task_id"]: t for t in json.loads(devmaster.run("tasks", "--json"))}[task_id]["state"]

    wait_for(lambda: state() == "done", 60, "the node to hear the result was stored")
    [archive] = list(results.glob("*.tar.gz"))
    import hashlib

    with tarfile.open(archive) as tar:
        blob = tar.extractfile("output/blob.bin").read()
        logs = tar.extractfile("logs.txt").read().decode()
    assert f"sha256 {hashlib.sha256(blob).hexdigest()}" in logs
    assert "resuming result upload at" in node.log.read_text(), "resumed from the master's offset, not from 0"
    assert node.proc.poll() is None
