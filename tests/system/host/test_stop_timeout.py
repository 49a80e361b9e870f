"""A drain under systemd outlasts the unit's TimeoutStopSec= (the real daemon, a real
task, a real systemd in systemd-nspawn): the unit says TimeoutStopSec=5 (a drop-in, as
an operator's unit written for a shorter drain would), worker.toml says stop_mode
"drain", the unit's Environment= (the same drop-in) HIVEMIND_DRAIN_TIMEOUT_S=30, and
`systemctl stop` during a task that runs > 5 s more waits for it: the daemon extends
the stop timeout (EXTEND_TIMEOUT_USEC) while it drains, so the stop takes longer than
5 s and still ends with Result=success, the task done, not SIGKILLed. The control,
first: the same daemon with systemd deaf to it (NotifyAccess=none) is SIGKILLed at 5 s
mid-drain, Result=timeout, as before this fix. And the package's prerm reads the same
Environment= to know how long a removal waits.

The engine runs on the host, so the task's bind mounts name host paths: the node's
state directory is a host directory bound at the same path (as in
tests/system/packaging/test_upgrade_task.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hivemind_worker.systemd.unit import DRAIN_MARGIN_S
from tests.conftest import REPO, cli, free_port
from tests.faults.drill import bundle, describe, task_row, wait_final, wait_task
from tests.system.host.conftest import boot_worker_machine
from tests.system.host.test_daemon_systemd import HW, dev_master  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(900)]

STOP_TIMEOUT_S = 5
PRERM = REPO / "packaging" / "debian" / "prerm"
DROP_INS = "/etc/systemd/system/hivemind-worker.service.d"


@pytest.fixture
def shared_state():
    # Not under /tmp or /var/tmp: the unit's PrivateTmp= would hide it from the service.
    state = Path(tempfile.mkdtemp(prefix="hivemind-stop-test.", dir="/var/lib"))
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_systemctl_stop_waits_for_the_drain(wheelhouse, host_rootfs, tmp_path, dev_master, task_image,  # noqa: F811
                                            shared_state):
    address, ca_hash, master_state = dev_master
    master = SimpleNamespace(state=master_state)  # what tests/faults/drill.py reads
    state = shared_state
    m = boot_worker_machine(wheelhouse, host_rootfs, tmp_path, binds=((state, str(state)),))
    try:
        m.exec(HW, "install")
        m.exec("sh", "-c", f"chown hivemind-worker:hivemind-worker {state} && chmod 750 {state}")
        m.write("/etc/hivemind-worker/worker.toml",
                f'monitor_port = {free_port()}\nstate_dir = "{state}"\ntask_image = "{task_image}"\n'
                'stop_mode = "drain"\nreport_interval_s = 1.0\n'
                "pressure_cpu_percent = 100.0\npressure_memory_percent = 100.0\n", 0o640)
        m.exec("chown", "root:hivemind-worker", "/etc/hivemind-worker/worker.toml")
        m.write(f"{DROP_INS}/test.conf", f"[Service]\nReadWritePaths={state}\nTimeoutStopSec={STOP_TIMEOUT_S}\n"
                                         "Environment=HIVEMIND_DRAIN_TIMEOUT_S=30\n")
        # The control first: the same daemon, but systemd ignores its notifications
        # (so no EXTEND_TIMEOUT_USEC either): what the unit's stop timeout does alone.
        m.write(f"{DROP_INS}/deaf.conf", "[Service]\nType=simple\nNotifyAccess=none\nWatchdogSec=0\n")
        m.exec("systemctl", "daemon-reload")
        token = cli("dev-master", "token", "create", "-s", str(master_state), check=True).stdout.strip()
        m.exec(HW, "enroll", "--master", address, "--token", token, "--ca-hash", ca_hash, timeout=60)
        m.exec("systemctl", "start", "hivemind-worker", timeout=90)
        m.wait_active("hivemind-worker", timeout_s=60)
        assert m.show("hivemind-worker", "TimeoutStopUSec") == f"{STOP_TIMEOUT_S}s"

        # A task of 60 lines 0.5 s apart (~30 s): it outlives the control's stop and the
        # restart, and still has more than the unit's 5 s to run at the real stop.
        done = subprocess.run([sys.executable, "-m", "hivemind_worker", "submit", str(bundle(tmp_path)),
                               "--env", "LINES=60", "--env", "PAUSE=0.5", "--env", "EXIT=0", "--cpus", "0.5",
                               "--memory", "128m", "--state-dir", str(master_state)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip().split()[-1]
        wait_task(master, task_id, lambda r: r["state"] == "running", 120, "to run")

        started = time.monotonic()
        m.exec("systemctl", "stop", "hivemind-worker", check=False, timeout=90)
        control = time.monotonic() - started
        journal = m.exec("journalctl", "-u", "hivemind-worker", "--no-pager", "-n", "40", check=False).stdout
        # The defect: the drain the operator configured (30 s) is SIGKILLed at 5 s.
        assert m.show("hivemind-worker", "Result") == "timeout", journal
        assert "State 'stop-sigterm' timed out" in journal, journal

        # Ours: systemd hears the daemon; the next agent re-attaches the task, and
        # `systemctl stop` waits for the drain past the unit's 5 s.
        (m.root / DROP_INS.lstrip("/") / "deaf.conf").unlink()
        m.exec("systemctl", "daemon-reload")
        m.exec("systemctl", "start", "hivemind-worker", timeout=90)
        m.wait_active("hivemind-worker", timeout_s=60)
        assert task_row(master, task_id)["state"] == "running", describe(master, task_id)
        started = time.monotonic()
        m.exec("systemctl", "stop", "hivemind-worker", timeout=90)
        took = time.monotonic() - started

        journal = m.exec("journalctl", "-u", "hivemind-worker", "--no-pager", "-n", "30", check=False).stdout
        result = m.show("hivemind-worker", "Result")
        assert result == "success", f"Result={result} after {took:.1f} s\n{journal}"
        assert took > STOP_TIMEOUT_S + 1, f"the drain took {took:.1f} s: too short to show anything\n{journal}"
        messages = [json.loads(e["MESSAGE"]).get("message", "") for e in m.journal("hivemind-worker")
                    if isinstance(e.get("MESSAGE"), str) and e["MESSAGE"].startswith("{")]
        assert "draining (deadline 30 s)" in messages, messages[-20:]  # the drop-in's, not the default 60
        assert any(msg.startswith("drain finished in") for msg in messages), messages[-20:]
        row = wait_final(master, task_id, 30)
        assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), describe(master, task_id)

        # prerm waits for the drain the service will do: the drop-in's 30 s plus the margin.
        func = re.search(r"^drain_wait_s\(\) \{\n.*?^\}\n", PRERM.read_text(), re.M | re.S)
        assert func, "packaging/debian/prerm has no drain_wait_s()"
        waits = m.exec("sh", "-c", func.group(0) + "drain_wait_s /opt/hivemind-worker/bin/python").stdout.strip()
        assert waits == str(30 + DRAIN_MARGIN_S)
        print(f"TimeoutStopSec={STOP_TIMEOUT_S}: without the extensions the drain was killed after {control:.1f} s; "
              f"with them systemctl stop took {took:.1f} s, Result={result}")
    finally:
        m.poweroff()
        m.remove()
