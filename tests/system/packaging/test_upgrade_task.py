"""A .deb upgrade while a task runs, on a booted host of each release: the packaged
service runs the task (in the host's Docker engine, through the bound socket), `dpkg -i`
of the next version restarts the service (postinst), the old agent hands the task
over, the new one re-attaches: the task finishes, its lines arrive once, its outcome
and result reach the master, and the master sees the new version.

The engine runs on the host, so the task's bind mounts name host paths: the node's
state directory is a host directory bound at the same path inside the booted host
(worker.toml state_dir, plus a unit drop-in that lets the sandboxed service write it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.faults.drill import assert_lines_once, bundle, describe, log_lines, result_archive, task_events, task_row, wait_final
from tests.system.packaging.conftest import REPO, build_deb, booted_host

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(1800)]

DEB1, DEB2 = "/var/tmp/hivemind-worker-1.deb", "/var/tmp/hivemind-worker-2.deb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configure(host, state: Path, task_image: str) -> None:
    """worker.toml and a unit drop-in for the test's state directory (before install)."""
    host.sh(f"chown hivemind-worker:hivemind-worker {state} 2>/dev/null; chmod 777 {state}; "
            "mkdir -p /etc/systemd/system/hivemind-worker.service.d /etc/hivemind-worker && "
            f"printf '[Service]\\nReadWritePaths={state}\\n' > /etc/systemd/system/hivemind-worker.service.d/state.conf && "
            "systemctl daemon-reload && "
            f"printf 'monitor_port = {_free_port()}\\nstate_dir = \"{state}\"\\ntask_image = \"{task_image}\"\\n"
            "pressure_cpu_percent = 100.0\\npressure_memory_percent = 100.0\\nreport_interval_s = 1.0\\n' "
            "> /etc/hivemind-worker/worker.toml")


def _start_task(dev_master, master, host, tmp_path) -> str:
    """A task of 40 lines over ~10 s, running, its first lines at the master."""
    done = subprocess.run([sys.executable, "-m", "hivemind_worker", "submit", str(bundle(tmp_path)),
                           "--env", "LINES=40", "--env", "PAUSE=0.25", "--env", "EXIT=0", "--cpus", "0.5",
                           "--memory", "128m", "--state-dir", str(dev_master.state_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip().split()[-1]
    deadline = time.monotonic() + 180
    while sum(1 for r in log_lines(master, task_id) if r["text"].startswith("line ")) < 3:
        assert time.monotonic() < deadline, f"{describe(master, task_id)}\n{host.journal()}"
        time.sleep(0.5)
    return task_id


def _assert_handed_over(dev_master, master, host, task_id: str, node_id: str, name: str, following: str) -> None:
    assert "running tasks keep running for the next agent" in host.journal(lines=300)
    row = wait_final(master, task_id, 240)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), \
        f"{describe(master, task_id)}\n{host.journal(lines=120)}"
    assert row["attempt"] == 1, "handed over, not retried"
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, 41)])
    with tarfile.open(result_archive(master, task_id)) as tar:
        assert tar.extractfile("output/done.txt").read() == b"40 lines"
    states = [e["state"] for e in task_events(master, task_id)]
    assert states.count("exited") == 1 and states.count("done") == 1, states
    assert task_row(master, task_id)["node_id"] == node_id
    deadline = time.monotonic() + 60
    while [r["agent_version"] for r in dev_master.nodes() if r["hostname"] == name] != [following]:
        assert time.monotonic() < deadline, dev_master.nodes()
        time.sleep(1)


def _versions() -> tuple[str, str]:
    version = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version"))
    return version, ".".join(version.split(".")[:-1] + [str(int(version.split(".")[-1]) + 1)])


def test_install_sh_upgrade_hands_the_running_task_over(release, packaging_rootfs, wheelhouse, dev_master, task_image,
                                                        tmp_path):
    """The same with install.sh: the next version's sources, installed over the running node."""
    version, following = _versions()
    master = SimpleNamespace(state=dev_master.state_dir)
    state = Path(tempfile.mkdtemp(prefix="hivemind-upgrade-test.", dir="/var/lib"))
    gid = Path("/var/run/docker.sock").stat().st_gid
    name = f"pk-upgi-{release[:4]}-{os.getpid()}"
    src, wheels = "/usr/local/src/hivemind-worker", "/mnt/wheelhouse"
    try:
        with booted_host(packaging_rootfs, name, source=src, binds={str(wheelhouse): wheels},
                         rw_binds={str(state): str(state)}) as host:
            host.sh(f"getent group docker || groupadd --system --gid {gid} docker")
            _configure(host, state, task_image)
            host.sh(f"{src}/install.sh --wheelhouse {wheels} --master {dev_master.address} --ca-hash {dev_master.ca_hash}",
                    env={"HIVEMIND_ENROLL_TOKEN": dev_master.token()}, timeout=600)
            rows = dev_master.wait_connected({name}, timeout=60)
            assert rows[0]["agent_version"] == version
            task_id = _start_task(dev_master, master, host, tmp_path)

            host.sh(f"sed -i 's/^version = .*/version = \"{following}\"/' {src}/pyproject.toml && "
                    f"sed -i 's/^__version__ = .*/__version__ = \"{following}\"/' {src}/hivemind_worker/__init__.py")
            started = time.monotonic()
            done = host.sh(f"{src}/install.sh --wheelhouse {wheels}", timeout=600)
            upgraded_in = time.monotonic() - started
            assert f"(was {version})" in done.stdout and "restarted" in done.stdout, done.stdout
            _assert_handed_over(dev_master, master, host, task_id, rows[0]["node_id"], name, following)
            print(f"{release}: install.sh of the next version took {upgraded_in:.1f} s with the task running")
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_deb_upgrade_hands_the_running_task_over(release, packaging_rootfs, deb_package, wheelhouse, build_roots,
                                                 dev_master, task_image, tmp_path):
    version = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version"))
    following = ".".join(version.split(".")[:-1] + [str(int(version.split(".")[-1]) + 1)])
    next_deb = build_deb(release, wheelhouse, build_roots, version=following)
    master = SimpleNamespace(state=dev_master.state_dir)  # what tests/faults/drill.py reads
    # Not under /tmp or /var/tmp: the unit's PrivateTmp= would hide it from the service.
    state = Path(tempfile.mkdtemp(prefix="hivemind-upgrade-test.", dir="/var/lib"))
    gid = Path("/var/run/docker.sock").stat().st_gid
    name = f"pk-upg-{release[:4]}-{os.getpid()}"
    try:
        with booted_host(packaging_rootfs, name, files={DEB1: deb_package, DEB2: next_deb},
                         rw_binds={str(state): str(state)}) as host:
            host.sh(f"getent group docker || groupadd --system --gid {gid} docker")
            host.sh(f"dpkg -i {DEB1}", timeout=300)
            host.sh(f"chown hivemind-worker:hivemind-worker {state} && chmod 750 {state} && "
                    "mkdir -p /etc/systemd/system/hivemind-worker.service.d && "
                    f"printf '[Service]\\nReadWritePaths={state}\\n' > /etc/systemd/system/hivemind-worker.service.d/state.conf && "
                    "systemctl daemon-reload && "
                    f"printf 'monitor_port = {_free_port()}\\nstate_dir = \"{state}\"\\ntask_image = \"{task_image}\"\\n"
                    "pressure_cpu_percent = 100.0\\npressure_memory_percent = 100.0\\nreport_interval_s = 1.0\\n' "
                    "> /etc/hivemind-worker/worker.toml && "
                    f"hivemind-worker enroll --master {dev_master.address} --ca-hash {dev_master.ca_hash} "
                    "&& systemctl start hivemind-worker", env={"HIVEMIND_ENROLL_TOKEN": dev_master.token()}, check=False)
            rows = dev_master.wait_connected({name}, timeout=60) if host.machine.show(
                "hivemind-worker.service", "ActiveState") == "active" else pytest.fail(host.journal(lines=80))
            assert rows[0]["agent_version"] == version

            done = subprocess.run([sys.executable, "-m", "hivemind_worker", "submit", str(bundle(tmp_path)),
                                   "--env", "LINES=40", "--env", "PAUSE=0.25", "--env", "EXIT=0", "--cpus", "0.5",
                                   "--memory", "128m", "--state-dir", str(dev_master.state_dir)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            task_id = done.stdout.strip().split()[-1]
            deadline = time.monotonic() + 180
            while sum(1 for r in log_lines(master, task_id) if r["text"].startswith("line ")) < 3:
                assert time.monotonic() < deadline, f"{describe(master, task_id)}\n{host.journal()}"
                time.sleep(0.5)

            pid = host.sh("systemctl show -P MainPID hivemind-worker").stdout.strip()
            started = time.monotonic()
            host.sh(f"dpkg -i {DEB2}", timeout=300)  # postinst restarts the service
            upgraded_in = time.monotonic() - started
            assert host.sh("systemctl show -P MainPID hivemind-worker").stdout.strip() != pid
            assert "running tasks keep running for the next agent" in host.journal(lines=300)

            row = wait_final(master, task_id, 240)
            assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), \
                f"{describe(master, task_id)}\n{host.journal(lines=120)}"
            assert row["attempt"] == 1, "handed over, not retried"
            assert_lines_once(master, task_id, [f"line {i}" for i in range(1, 41)])
            with tarfile.open(result_archive(master, task_id)) as tar:
                assert tar.extractfile("output/done.txt").read() == b"40 lines"
            states = [e["state"] for e in task_events(master, task_id)]
            assert states.count("exited") == 1 and states.count("done") == 1, states
            assert task_row(master, task_id)["node_id"] == rows[0]["node_id"]
            deadline = time.monotonic() + 60
            while [r["agent_version"] for r in dev_master.nodes() if r["hostname"] == name] != [following]:
                assert time.monotonic() < deadline, dev_master.nodes()
                time.sleep(1)
            print(f"{release}: dpkg -i of the next version took {upgraded_in:.1f} s with the task running")
    finally:
        shutil.rmtree(state, ignore_errors=True)
