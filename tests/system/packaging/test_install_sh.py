"""install.sh on a fresh, booted Debian 12 or 13 host: refuses what it must, installs,
enrolls with a dev-master on the host, starts the service; a second run changes
nothing; --uninstall keeps the identity and --uninstall --purge removes it.

One boot for all of it: booting is the slow part."""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.timeout(900)]

SRC = "/usr/local/src/hivemind-worker"
WHEELHOUSE = "/mnt/wheelhouse"
# What a run may change: the venv, the link, config and identity, the unit, and
# the running service (a restart changes MainPID).
FINGERPRINT = (
    "find /opt/hivemind-worker /usr/local/bin/hivemind-worker /etc/hivemind-worker "
    "/etc/systemd/system/hivemind-worker.service /etc/systemd/system/multi-user.target.wants "
    "-printf '%p %s %T@ %m %u:%g\\n' 2>/dev/null | sort | sha256sum; "
    "systemctl show -P MainPID hivemind-worker; systemctl show -P NRestarts hivemind-worker"
)


def test_install_sh_enrolls_and_is_idempotent(release, boot, wheelhouse, dev_master):
    name = f"pk-inst-{release[:4]}-{os.getpid()}"
    with boot(name, source=SRC, binds={str(wheelhouse): WHEELHOUSE}) as host:
        timings = dict(host.timings)

        # Refusals, each with its reason on stderr.
        done = host.sh(f"setpriv --reuid=65534 --regid=65534 --clear-groups {SRC}/install.sh", check=False)
        assert done.returncode != 0 and "run as root" in done.stderr, done.stderr
        done = host.sh(
            "cp --remove-destination /usr/lib/os-release /etc/os-release.real && "
            "printf 'ID=fedora\\nVERSION_ID=40\\nPRETTY_NAME=\"Fedora Linux 40\"\\n' > /etc/os-release && "
            f"{SRC}/install.sh; rc=$?; mv /etc/os-release.real /etc/os-release; exit $rc", check=False)
        assert done.returncode != 0 and "unsupported OS: Fedora Linux 40" in done.stderr, done.stderr
        done = host.sh(f"{SRC}/install.sh --token x", check=False)
        assert done.returncode != 0 and "--master" in done.stderr, done.stderr

        # The hosts share the machine's network: give the monitor a free port.
        host.sh(f"mkdir -p /etc/hivemind-worker && echo 'monitor_port = {free_port()}' > /etc/hivemind-worker/worker.toml")

        # First run: installs, enrolls, starts.
        started = time.monotonic()
        first = host.sh(f"{SRC}/install.sh --wheelhouse {WHEELHOUSE} --master {dev_master.address} "
                        f"--ca-hash {dev_master.ca_hash}",
                        env={"HIVEMIND_ENROLL_TOKEN": dev_master.token()}, check=False, timeout=600)
        timings["first_run_s"] = time.monotonic() - started
        assert first.returncode == 0, f"{first.stdout}\n{first.stderr}\n{host.journal()}"
        assert "installed hivemind-worker" in first.stdout and "enrolled with" in first.stdout, first.stdout
        assert "docker.io" not in first.stdout  # a Docker engine is there (the host's socket)
        assert host.sh("systemctl is-active hivemind-worker", check=False).stdout.strip() == "active", host.journal()
        assert host.sh("systemctl is-enabled hivemind-worker").stdout.strip() == "enabled"
        assert host.sh("readlink /usr/local/bin/hivemind-worker").stdout.strip() == "/opt/hivemind-worker/bin/hivemind-worker"
        assert host.sh("stat -c '%a %U' /etc/hivemind-worker/node.json").stdout.split() == ["640", "root"]
        try:
            rows = dev_master.wait_connected({name})
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{host.journal()}") from None
        timings["connected_after_s"] = time.monotonic() - started
        node_id = rows[0]["node_id"]

        # Second run: nothing changes, not even the running process.
        before = host.sh(FINGERPRINT).stdout
        started = time.monotonic()
        second = host.sh(f"{SRC}/install.sh --wheelhouse {WHEELHOUSE} --master {dev_master.address} "
                         f"--ca-hash {dev_master.ca_hash}",
                         env={"HIVEMIND_ENROLL_TOKEN": "used-up-token"}, timeout=300)
        timings["second_run_s"] = time.monotonic() - started
        assert "already installed; nothing changed" in second.stdout, second.stdout
        assert "already enrolled" in second.stdout
        assert host.sh(FINGERPRINT).stdout == before
        assert [r["node_id"] for r in dev_master.nodes() if r["hostname"] == name] == [node_id]

        # --reinstall (new sources of the same version) replaces the worker and
        # restarts the service; the node stays the same node.
        pid = host.sh("systemctl show -P MainPID hivemind-worker").stdout
        third = host.sh(f"{SRC}/install.sh --reinstall --wheelhouse {WHEELHOUSE}", timeout=300)
        assert "(was " in third.stdout and "restarted hivemind-worker.service" in third.stdout, third.stdout
        assert host.sh("systemctl show -P MainPID hivemind-worker").stdout != pid
        assert "running tasks keep running for the next agent" in host.journal(lines=200), "a handoff, not a drain"
        dev_master.wait_connected({name})
        assert [r["node_id"] for r in dev_master.nodes() if r["hostname"] == name] == [node_id]

        # --uninstall keeps the identity; --purge removes it and the user.
        removed = host.sh(f"{SRC}/install.sh --uninstall", timeout=180)
        assert "draining (deadline" in host.journal(lines=200), "a removal drains (SIGINT)"
        assert "before the removal (at most 90 s)" in removed.stdout + removed.stderr  # the default 60 s + margin
        assert host.sh("systemctl is-active hivemind-worker", check=False).stdout.strip() != "active"
        host.sh("test ! -e /opt/hivemind-worker && test ! -e /usr/local/bin/hivemind-worker "
                "&& test -f /etc/hivemind-worker/node.json && getent passwd hivemind-worker")
        host.sh(f"{SRC}/install.sh --uninstall --purge", timeout=180)
        host.sh("test ! -e /etc/hivemind-worker && test ! -e /var/lib/hivemind-worker "
                "&& ! getent passwd hivemind-worker && test ! -e /etc/systemd/system/hivemind-worker.service")

        # A package to install and no mirror: it says so and stops.
        (host.root / "var/tmp/no-mirror.list").write_text(f"deb http://127.0.0.1:9/debian {release} main\n")
        (host.root / "var/tmp/no-sources.d").mkdir()
        (host.root / "var/tmp/no-mirror.conf").write_text(
            'Dir::Etc::sourcelist "/var/tmp/no-mirror.list";\nDir::Etc::sourceparts "/var/tmp/no-sources.d";\n')
        host.sh("dpkg -r wireguard-go")
        done = host.sh(f"APT_CONFIG=/var/tmp/no-mirror.conf {SRC}/install.sh --wheelhouse {WHEELHOUSE}",
                       check=False, timeout=180)
        assert done.returncode != 0 and "cannot reach the package mirror" in done.stderr, done.stdout + done.stderr
        assert "wireguard-go" in done.stdout
    print(f"install.sh timings: { {k: round(v, 1) for k, v in timings.items()} }")
