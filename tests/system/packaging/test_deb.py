"""The release's .deb on a fresh, booted Debian 12 or 13 host: `dpkg -i` (its dependencies are the
distribution's, already in the root file system), the unit enabled but not started,
`hivemind-worker doctor` runs, enrollment starts it, an upgrade restarts it with a
handoff (running tasks stay), `dpkg -r` drains, stops and keeps the identity, `dpkg -P`
deletes it."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.timeout(900)]

DEB = "/var/tmp/hivemind-worker.deb"


def test_requirements_lock_covers_pyproject():
    """The package (and install.sh's offline wheelhouse) pin every dependency."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower().replace("_", "-") for d in deps}
    for lock in ("requirements.txt", "requirements-py313.txt"):  # Python 3.11 (Debian 12), 3.13 (13)
        pinned = {line.split("==")[0].lower().replace("_", "-")
                  for line in (repo / "packaging/debian" / lock).read_text().splitlines()
                  if "==" in line and not line.startswith("#")}
        assert names <= pinned, f"not in packaging/debian/{lock}: {sorted(names - pinned)}; run scripts/build-deb.sh --lock"


def test_deb_install_doctor_remove_purge(release, boot, deb_package, dev_master):
    name = f"pk-deb-{release[:4]}-{os.getpid()}"
    with boot(name, files={DEB: deb_package}) as host:
        timings = dict(host.timings)
        started = time.monotonic()
        done = host.sh(f"dpkg -i {DEB}", timeout=300)
        timings["dpkg_i_s"] = time.monotonic() - started
        assert "hivemind-worker enroll" in done.stdout  # the next step, told once

        host.sh("test -x /opt/hivemind-worker/bin/python3 && hivemind-worker --version")
        assert host.sh("readlink -f /usr/bin/hivemind-worker").stdout.strip() == "/opt/hivemind-worker/bin/hivemind-worker"
        host.sh("getent passwd hivemind-worker && test -d /etc/hivemind-worker && test -d /var/lib/hivemind-worker")
        assert host.sh("stat -c '%a %U' /etc/hivemind-worker").stdout.split() == ["750", "root"]
        assert host.sh("systemctl is-enabled hivemind-worker").stdout.strip() == "enabled"
        assert host.sh("systemctl is-active hivemind-worker", check=False).stdout.strip() == "inactive"

        # doctor runs from the packaged venv; on a node that is not enrolled yet some
        # checks fail (exit 1), which is its job, but it must not crash.
        doctor = host.sh("hivemind-worker doctor --json", check=False, timeout=120)
        assert doctor.returncode in (0, 1), f"{doctor.stdout}\n{doctor.stderr}"
        report = json.loads(doctor.stdout)
        assert report["checks"] and all("outcome" in c or "status" in c for c in report["checks"]), report
        print("doctor:", [(c.get("name"), c.get("outcome", c.get("status"))) for c in report["checks"]])

        # The packaged venv really runs the daemon: enroll, start, connected. (The
        # hosts share the machine's network: the monitor gets a free port.)
        # (A drain longer than the old fixed 150 s wait: prerm must wait for it.)
        host.sh(f"printf 'monitor_port = {free_port()}\\ndrain_timeout_s = 150\\n' > /etc/hivemind-worker/worker.toml && "
                f"hivemind-worker enroll --master {dev_master.address} --ca-hash {dev_master.ca_hash} "
                "&& systemctl start hivemind-worker", env={"HIVEMIND_ENROLL_TOKEN": dev_master.token()})
        try:
            dev_master.wait_connected({name})
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{host.journal()}") from None

        # Installing over it (an upgrade) keeps it enrolled and restarts it on the new code.
        pid = host.sh("systemctl show -P MainPID hivemind-worker").stdout
        host.sh(f"dpkg -i {DEB}", timeout=300)
        assert host.sh("systemctl is-active hivemind-worker", check=False).stdout.strip() == "active", host.journal()
        assert host.sh("systemctl show -P MainPID hivemind-worker").stdout != pid
        assert "running tasks keep running for the next agent" in host.journal(lines=200), "a handoff, not a drain"
        dev_master.wait_connected({name})

        # Remove: the service stops, the code goes, the identity stays.
        removed = host.sh("dpkg -r hivemind-worker", timeout=180)
        assert "draining (deadline 150 s)" in host.journal(lines=200), "a removal drains (SIGINT)"
        assert "before the removal (at most 180 s)" in removed.stderr, removed.stderr  # drain_timeout_s + margin
        assert host.sh("systemctl is-active hivemind-worker", check=False).stdout.strip() != "active"
        host.sh("test ! -e /opt/hivemind-worker && test ! -e /usr/bin/hivemind-worker "
                "&& test ! -e /lib/systemd/system/hivemind-worker.service")
        host.sh("test -s /etc/hivemind-worker/node.json && test -d /var/lib/hivemind-worker "
                "&& getent passwd hivemind-worker")

        # Purge: identity, state and the service user go too.
        host.sh("dpkg -P hivemind-worker", timeout=180)
        host.sh("test ! -e /etc/hivemind-worker && test ! -e /var/lib/hivemind-worker "
                "&& ! getent passwd hivemind-worker && ! test -e /etc/systemd/system/multi-user.target.wants/hivemind-worker.service")
        assert "hivemind-worker" not in host.sh("dpkg -l | awk '{print $2}'").stdout.split()
    print(f"deb timings: { {k: round(v, 1) for k, v in timings.items()} }")
