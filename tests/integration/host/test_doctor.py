"""`doctor` against real components (Docker, a TLS gRPC master, files, sockets):
a healthy host, one failure of each check with its fix line, and a hung Docker
socket that still lets the doctor finish within its bound."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from hivemind_worker.doctor import DoctorContext, Outcome, run_doctor
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.identity import NodeIdentity, VpnAssignment, ca_path, ensure_usage_key, save_identity, wg_key_path
from hivemind_worker.vpn.config import render_wg_conf
from hivemind_worker.vpn.keys import generate_keypair
from tests.conftest import cli, docker_available, free_port
from tests.integration.host.fakes import FakeMaster, FakeNvml, HungSocket, OldDockerApi, make_ca, pem

CREDENTIAL = "hmc_doctor_test_credential_1234567890"


class Host:
    """A node's files in a temporary directory, and a doctor context for them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.master_port = free_port()
        self.unit_dir = root / "units"
        self.unit_dir.mkdir(parents=True)
        (self.unit_dir / "hivemind-worker.service").write_text("[Service]\n")
        self.wg_conf = root / f"hmt{uuid.uuid4().hex[:8]}.conf"  # an interface name nobody uses
        self.settings = Settings(config_dir=self.config_dir, state_dir=root / "state", monitor_port=free_port(),
                                 wireguard_config_path=self.wg_conf)

    def enroll(self, ca_pem: bytes, vpn: VpnAssignment = VpnAssignment()) -> None:
        save_identity(self.config_dir, NodeIdentity("node-7", CREDENTIAL, f"127.0.0.1:{self.master_port}", True, vpn))
        atomic_write(ca_path(self.config_dir), ca_pem, 0o644)
        atomic_write(wg_key_path(self.config_dir), generate_keypair().private_key + "\n", 0o600)

    def context(self, **overrides) -> DoctorContext:
        values = dict(settings=self.settings, user="root", timeout_s=5.0, nvml=FakeNvml([]),
                      min_free_bytes=1, warn_free_bytes=1, unit_dirs=(self.unit_dir,))
        values.update(overrides)
        return DoctorContext(**values)

    def doctor(self, **overrides) -> dict:
        results = asyncio.run(run_doctor(self.settings, context=self.context(**overrides)))
        return {r.name: r for r in results}


@pytest.fixture
def host(tmp_path, monkeypatch) -> Host:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return Host(tmp_path)


@pytest.fixture
def master(host):
    with FakeMaster(host.master_port, CREDENTIAL) as fake:
        host.enroll(pem(fake.ca))
        yield fake


def assert_fails(results: dict, name: str, detail: str, fix: str) -> None:
    r = results[name]
    assert r.outcome is Outcome.FAIL, r
    assert detail in r.detail, r
    assert fix in r.fix, r


needs_docker = pytest.mark.skipif(not docker_available(), reason="needs a running Docker engine")


@needs_docker
def test_healthy_host(host, master):
    results = host.doctor()
    failing = [r for r in results.values() if r.outcome is Outcome.FAIL]
    assert not failing, failing
    for name in ("config", "enrolled", "credential files", "docker reachable", "docker version", "docker access",
                 "disk space", "wireguard tools", "wireguard implementation", "master reachable",
                 "credential accepted", "clock skew", "monitor port"):
        assert results[name].outcome is Outcome.PASS, results[name]
    assert results["nvidia driver"].outcome is Outcome.WARN  # no GPU: a warning, not a failure
    assert "TLS, pinned CA" in results["master reachable"].detail
    assert "(NOT_FOUND)" in results["credential accepted"].detail
    for r in results.values():
        assert CREDENTIAL not in r.line() and CREDENTIAL not in json.dumps(r.as_dict())


def test_config_error(host, master):
    results = host.doctor(config_error="worker.toml: report_interval_s: must be greater than 0 seconds")
    assert_fails(results, "config", "report_interval_s", "edit ")


def test_not_enrolled(host):
    results = host.doctor()
    assert_fails(results, "enrolled", "not enrolled", "hivemind-worker enroll --master")
    assert_fails(results, "master reachable", "not enrolled", "hivemind-worker enroll")


def test_credential_file_0644(host, master):
    (host.config_dir / "node.json").chmod(0o644)
    assert_fails(host.doctor(), "credential files", "mode 0644", f"chmod 600 {host.config_dir / 'node.json'}")


def test_usage_key_0644(host, master):
    key, _ = ensure_usage_key(host.config_dir, host.settings.state_dir)
    key.path.chmod(0o644)
    assert_fails(host.doctor(), "credential files", "mode 0644", f"chmod 600 {key.path}")


def test_docker_socket_missing(host, master, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{host.root}/no-such-docker.sock")
    results = host.doctor()
    assert_fails(results, "docker reachable", "no Docker engine at", "systemctl start docker")


def test_docker_too_old(host, master, monkeypatch):
    sock = host.root / "docker.sock"
    with OldDockerApi(sock):
        monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
        results = host.doctor()
    assert results["docker reachable"].outcome is Outcome.PASS
    assert_fails(results, "docker version", "19.03.15 is older than 20.10", "upgrade Docker")


@pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="needs the Docker socket")
def test_service_user_not_in_docker_group(host, master):
    assert_fails(host.doctor(user="nobody"), "docker access", "nobody is not in group", "usermod -aG")


def test_service_user_missing(host, master):
    assert_fails(host.doctor(user="hm-no-such-user"), "docker access", "does not exist", "sudo hivemind-worker install")


def test_disk_full(host, master):
    assert_fails(host.doctor(min_free_bytes=1 << 60), "disk space", "GiB free for", "docker system prune")


def test_nvidia_driver_broken(host, master):
    results = host.doctor(nvml=FakeNvml([], init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert_fails(results, "nvidia driver", "NVML is installed but fails", "modprobe nvidia")


@needs_docker
def test_gpu_without_nvidia_runtime(host, master):
    results = host.doctor(nvml=FakeNvml(["NVIDIA H100 80GB HBM3"]))
    assert results["nvidia driver"].outcome is Outcome.PASS
    assert "1 GPU(s) (NVIDIA H100 80GB HBM3), driver 550.54.15" in results["nvidia driver"].detail
    assert_fails(results, "nvidia runtime", "no nvidia runtime", "nvidia-ctk runtime configure")


def test_wireguard_tools_missing(host, master, monkeypatch):
    bare = host.root / "bin"
    bare.mkdir()
    os.symlink("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "/sbin/ip", bare / "ip")
    monkeypatch.setenv("PATH", str(bare))
    results = host.doctor()
    assert_fails(results, "wireguard tools", "wg and wg-quick not found", "apt-get install wireguard-tools")
    if not Path("/sys/module/wireguard").exists():
        assert_fails(results, "wireguard implementation", "no wireguard-go", "apt-get install wireguard-go")


def test_wg_conf_corrupted(host, master):
    hub = generate_keypair()
    vpn = VpnAssignment("10.88.0.2/32", hub.public_key, "192.0.2.1:51820", ("10.88.0.0/24",))
    text = render_wg_conf(generate_keypair().private_key, vpn).replace("Endpoint = 192.0.2.1:51820", "Endpoint = nowhere")
    atomic_write(host.wg_conf, text, 0o600)
    results = host.doctor()
    assert_fails(results, "wg0.conf", f"{host.wg_conf.name} line 9: Endpoint: 'nowhere' is not HOST:PORT", "fix the line in")


def test_wg_conf_public_and_tunnel_down(host, master):
    hub = generate_keypair()
    vpn = VpnAssignment("10.88.0.2/32", hub.public_key, "192.0.2.1:51820", ("10.88.0.0/24",))
    atomic_write(host.wg_conf, render_wg_conf(generate_keypair().private_key, vpn), 0o644)
    results = host.doctor()
    assert_fails(results, "wg0.conf", "mode 0644", f"chmod 600 {host.wg_conf}")
    assert_fails(results, "wireguard tunnel", f"{host.wg_conf.stem} is down", "sudo hivemind-worker up")


def test_wrong_master_ca(host, master):
    other_ca, _ = make_ca("somebody else's CA")
    atomic_write(ca_path(host.config_dir), pem(other_ca), 0o644)
    assert_fails(host.doctor(), "master reachable", "TLS handshake", "CA changed")


def test_credential_refused(host):
    with FakeMaster(host.master_port, "hmc_another_nodes_credential") as fake:
        host.enroll(pem(fake.ca))
        results = host.doctor()
    assert results["master reachable"].outcome is Outcome.PASS
    assert_fails(results, "credential accepted", "refused this node's credential (UNAUTHENTICATED)", "re-enroll")


def test_clock_skew(host):
    with FakeMaster(host.master_port, CREDENTIAL, clock_offset_s=120) as fake:
        host.enroll(pem(fake.ca))
        results = host.doctor()
    assert_fails(results, "clock skew", "off the master's", "timedatectl set-ntp true")


def test_master_down(host):
    ca, _ = make_ca()
    host.enroll(pem(ca))
    assert_fails(host.doctor(timeout_s=3), "master reachable", "no answer from", "check the master is running")


def test_unit_not_installed(host, master):
    (host.unit_dir / "hivemind-worker.service").unlink()
    assert_fails(host.doctor(), "systemd unit", "not installed", "sudo hivemind-worker install")


def _listener(port: int, *argv: str) -> subprocess.Popen:
    code = ("import socket,sys,time;s=socket.socket();"
            f"s.bind(('127.0.0.1',{port}));s.listen();print('ok',flush=True);time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ok"
    return proc


def test_monitor_port_taken_by_another_program(host, master):
    other = _listener(host.settings.monitor_port)
    try:
        assert_fails(host.doctor(), "monitor port", "is taken by", "set monitor_port in worker.toml")
    finally:
        other.kill()
        other.wait()


def test_monitor_port_ours(host, master):
    ours = _listener(host.settings.monitor_port, "hivemind-worker", "run")  # looks like our daemon
    try:
        result = host.doctor()["monitor port"]
    finally:
        ours.kill()
        ours.wait()
    assert result.outcome is Outcome.PASS and "served by hivemind-worker" in result.detail, result


def test_hung_docker_socket_is_bounded(tmp_path):
    sock = tmp_path / "hung.sock"
    with HungSocket(sock):
        started = time.monotonic()
        done = cli("doctor", "--timeout", "2", "--json",
                   env={"DOCKER_HOST": f"unix://{sock}", "HIVEMIND_CONFIG_DIR": str(tmp_path / "etc"),
                        "HIVEMIND_STATE_DIR": str(tmp_path / "state")}, timeout=30)
        elapsed = time.monotonic() - started
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert done.returncode == 1 and report["ok"] is False
    assert checks["docker reachable"]["outcome"] == "FAIL"
    assert "systemctl start docker" in checks["docker reachable"]["fix"]
    assert elapsed < 2 + 6, f"doctor took {elapsed:.1f}s with a hung Docker socket"  # bound + interpreter start
