"""The signed APT repository (scripts/build-apt-repo.sh) on a booted host of each
release: served over HTTP from an address inside a network namespace this test makes,
trusted through /etc/apt/keyrings + signed-by=; `apt-get install` takes this tree's
version, `apt-get upgrade` moves the running node to the next one (the master and the
monitor see the new version; the restart hands running tasks over). An unsigned
repository and one signed by another key are refused by apt."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.system.packaging.conftest import REPO, build_deb

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.timeout(1800)]

BUILD_REPO = REPO / "scripts" / "build-apt-repo.sh"
KEYRING = "/etc/apt/keyrings/hivemind.gpg"


def _version() -> str:
    return next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
                if line.startswith("version"))


def _next_version(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}")
    return done


@pytest.fixture
def served(tmp_path):
    """An HTTP server on an address inside a network namespace of our own (reached from
    the host, and so from the booted hosts, which share its network, over a veth pair).
    Yields (directory it serves, base URL)."""
    if not shutil.which("reprepro") or not shutil.which("gpg"):
        pytest.skip("needs reprepro and gnupg: apt-get install reprepro gnupg (scripts/install-test-deps.sh)")
    tag = f"{os.getpid() % 10000}"
    ns, host_if, ns_if = f"hmapt{tag}", f"hmapt{tag}h", f"hmapt{tag}n"
    k = os.getpid() % 60
    host_ip, ns_ip = f"198.51.100.{4 * k + 1}", f"198.51.100.{4 * k + 2}"  # TEST-NET-2, a /30 of ours
    root = tmp_path / "www"
    root.mkdir()
    server = None
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _sh("ip", "-n", ns, "link", "set", ns_if, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        port = 8080
        log = open(tmp_path / "http.log", "w")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind", ns_ip,
                                   "--directory", str(root), str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((ns_ip, port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"http.server did not start: {(tmp_path / 'http.log').read_text()}")
                time.sleep(0.2)
        yield root, f"http://{ns_ip}:{port}"
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
            server.wait(10)
        _sh("ip", "link", "del", host_if, check=False)
        _sh("ip", "netns", "del", ns, check=False)


def _build_repo(out: Path, gnupg: Path, *debs: Path) -> None:
    done = subprocess.run(["bash", str(BUILD_REPO), "--out", str(out), "--gnupghome", str(gnupg), "--new-key",
                           *map(str, debs)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"build-apt-repo.sh failed:\n{done.stdout}\n{done.stderr}"


def _apt_update(host, check: bool = True):
    return host.sh("apt-get update 2>&1", check=check, timeout=180)


def test_install_and_upgrade_from_the_signed_repository(release, boot, deb_package, wheelhouse, build_roots,
                                                        dev_master, served, tmp_path):
    www, url = served
    version, following = _version(), _next_version(_version())
    next_deb = build_deb(release, wheelhouse, build_roots, version=following)
    keys = tmp_path / "signer"
    _build_repo(www / "repo", keys, deb_package)

    # Two repositories apt must refuse: one without signatures, one signed by a stranger.
    shutil.copytree(www / "repo", www / "unsigned")
    for f in (www / "unsigned" / "dists" / release).glob("*"):
        if f.name in ("InRelease", "Release.gpg"):
            f.unlink()
    _build_repo(www / "stranger", tmp_path / "stranger-key", deb_package)

    name = f"pk-apt-{release[:4]}-{os.getpid()}"
    with boot(name, files={"/var/tmp/hivemind.gpg": www / "repo" / "hivemind-archive-keyring.gpg"}) as host:
        # Only our repository: the booted host has no mirror to reach.
        host.sh("rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; "
                f"install -m 0644 /var/tmp/hivemind.gpg {KEYRING}")

        for bad, why in (("unsigned", "not signed"), ("stranger", "NO_PUBKEY|not signed|couldn't be verified")):
            host.sh(f"echo 'deb [signed-by={KEYRING}] {url}/{bad} {release} main' > /etc/apt/sources.list.d/hivemind.list")
            done = _apt_update(host, check=False)
            assert done.returncode != 0, f"apt-get update accepted the {bad} repository:\n{done.stdout}"
            assert any(w in done.stdout for w in why.split("|")), done.stdout
            policy = host.sh("apt-cache policy hivemind-worker").stdout
            assert "Candidate: (none)" in policy or not policy.strip(), f"{bad}: apt would install from it:\n{policy}"

        # The operator's three lines (README), with the key already copied in.
        host.sh(f"echo 'deb [signed-by={KEYRING}] {url}/repo {release} main' > /etc/apt/sources.list.d/hivemind.list")
        _apt_update(host)
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends hivemind-worker", timeout=300)
        assert host.sh("hivemind-worker --version").stdout.split() == ["hivemind-worker", version]

        host.sh(f"echo 'monitor_port = {free_port()}' > /etc/hivemind-worker/worker.toml && "
                f"hivemind-worker enroll --master {dev_master.address} --ca-hash {dev_master.ca_hash} "
                "&& systemctl start hivemind-worker", env={"HIVEMIND_ENROLL_TOKEN": dev_master.token()})
        rows = dev_master.wait_connected({name})
        assert rows[0]["agent_version"] == version, rows

        # The next version is published; `apt-get upgrade` moves the node to it.
        _build_repo(www / "repo", keys, next_deb)
        _apt_update(host)
        pid = host.sh("systemctl show -P MainPID hivemind-worker").stdout.strip()
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get upgrade -y", timeout=300)
        assert host.sh("hivemind-worker --version").stdout.split() == ["hivemind-worker", following]
        host.machine.wait_active("hivemind-worker.service")
        assert host.sh("systemctl show -P MainPID hivemind-worker").stdout.strip() != pid, "restarted on the new code"
        journal = host.journal(lines=200)
        assert "running tasks keep running for the next agent" in journal, journal  # a handoff, not a drain

        deadline = time.monotonic() + 90
        while True:
            rows = [r for r in dev_master.nodes() if r["hostname"] == name]
            if rows and rows[0]["agent_version"] == following and rows[0]["session_state"] == "connected":
                break
            assert time.monotonic() < deadline, f"the master still sees {rows}"
            time.sleep(1)
        status = host.sh("hivemind-worker status --json", check=False)
        assert json.loads(status.stdout)["version"] == following, status.stdout  # what the monitor shows
