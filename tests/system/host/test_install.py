"""`hivemind-worker install` on a booted Debian (systemd-nspawn): service user in
the docker group, directories and modes, the rendered unit enabled, idempotent,
started only once enrolled, its sandbox still reaching Docker, uninstall keeping
the identity and --purge removing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivemind_worker.systemd.unit import render_unit

pytestmark = [pytest.mark.system, pytest.mark.root]

HW = "/opt/hivemind-worker/bin/hivemind-worker"
PY = "/opt/hivemind-worker/bin/python"
PROBE = (Path(__file__).parent / "notify_probe.py").read_text()
# Keeps the installed unit (user, sandbox, notify, watchdog) but runs the probe.
DROP_IN = f"""\
[Service]
ExecStart=
ExecStart={PY} /usr/local/lib/notify_probe.py
Environment=PROBE_STARTUP_S=0.5 PROBE_CHECKS=1
"""


def _stat(m, path: str) -> str:
    return m.exec("stat", "-c", "%U:%G %a", path).stdout.strip()


def test_install_enable_sandbox_uninstall_purge(worker_machine):
    m = worker_machine
    first = m.exec(HW, "install").stdout
    assert "created system user hivemind-worker" in first, first
    assert "enabled hivemind-worker.service" in first
    assert "docker" in m.exec("id", "-nG", "hivemind-worker").stdout.split()
    assert _stat(m, "/etc/hivemind-worker") == "root:hivemind-worker 750"  # root-run commands trust it
    assert _stat(m, "/var/lib/hivemind-worker") == "hivemind-worker:hivemind-worker 750"
    unit = (m.root / "etc/systemd/system/hivemind-worker.service").read_text()
    assert unit == render_unit(Path(HW))
    assert m.exec("systemctl", "is-enabled", "hivemind-worker").stdout.strip() == "enabled"
    verify = m.exec("systemd-analyze", "verify", "/etc/systemd/system/hivemind-worker.service", check=False)
    assert verify.returncode == 0, verify.stderr

    again = m.exec(HW, "install").stdout
    assert "exists and is in group docker" in again and "is up to date" in again, again

    # Not enrolled: the unit's condition keeps it from starting.
    m.exec("systemctl", "start", "hivemind-worker")
    assert m.exec("systemctl", "is-active", "hivemind-worker", check=False).stdout.strip() == "inactive"
    assert m.show("hivemind-worker", "ConditionResult") == "no"

    # "Enrollment" as root, then the files shared (read-only) with the service group.
    m.exec(PY, "-c", "from pathlib import Path; from hivemind_worker.fsutil import atomic_write;"
           "from hivemind_worker.hostsetup import share_with_service;"
           "p = Path('/etc/hivemind-worker/node.json'); atomic_write(p, '{}', 0o600); share_with_service([p])")
    assert _stat(m, "/etc/hivemind-worker/node.json") == "root:hivemind-worker 640"

    # The installed unit's sandbox still lets the service use Docker and its state dir.
    m.write("/usr/local/lib/notify_probe.py", PROBE)
    m.write("/etc/systemd/system/hivemind-worker.service.d/probe.conf", DROP_IN)
    m.exec("systemctl", "daemon-reload")
    m.exec("systemctl", "start", "hivemind-worker")
    m.wait_active("hivemind-worker", timeout_s=20)
    status = m.exec("systemctl", "status", "--no-pager", "hivemind-worker", check=False).stdout
    expected_docker = "docker=ok" if (m.root / "run/docker.sock").exists() or Path("/var/run/docker.sock").exists() else "docker="
    assert expected_docker in status and "state=rw" in status and "etc=ro" in status, status
    assert m.show("hivemind-worker", "User") == "hivemind-worker"

    doctor = m.exec(HW, "doctor", "--json", check=False)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["systemd unit"]["outcome"] == "PASS", checks["systemd unit"]
    assert checks["credential files"]["outcome"] == "PASS", checks["credential files"]
    if Path("/var/run/docker.sock").exists():
        assert checks["docker access"]["outcome"] == "PASS", checks["docker access"]
        assert checks["docker reachable"]["outcome"] == "PASS", checks["docker reachable"]

    m.exec("systemctl", "stop", "hivemind-worker", timeout=60)
    assert m.show("hivemind-worker", "Result") == "success"
    m.exec("rm", "-r", "/etc/systemd/system/hivemind-worker.service.d")

    out = m.exec(HW, "install", "--uninstall").stdout
    assert "kept /etc/hivemind-worker (node identity)" in out, out
    assert not (m.root / "etc/systemd/system/hivemind-worker.service").exists()
    assert (m.root / "etc/hivemind-worker/node.json").exists()
    assert m.exec("systemctl", "is-enabled", "hivemind-worker", check=False).returncode != 0

    out = m.exec(HW, "install", "--uninstall", "--purge").stdout
    assert "deleted /etc/hivemind-worker" in out and "deleted user hivemind-worker" in out, out
    assert not (m.root / "etc/hivemind-worker").exists() and not (m.root / "var/lib/hivemind-worker").exists()
    assert m.exec("id", "hivemind-worker", check=False).returncode != 0
