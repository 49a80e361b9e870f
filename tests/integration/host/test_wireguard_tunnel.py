"""A real WireGuard tunnel (wireguard-go where the kernel has none) between a hub
namespace and a node namespace, driven by `hivemind-worker up` / `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hivemind_worker.identity import NodeIdentity, VpnAssignment, save_identity, wg_key_path
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.vpn.keys import generate_keypair

HERE = Path(__file__).parent
ECHO_PORT = 7443  # inside the hub namespace only: cannot clash with anything
LISTEN_PORT = 51820


def _cli(pair, ns: str, config_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(config_dir), "HIVEMIND_STATE_DIR": str(config_dir / "state")}
    return subprocess.run(pair.exec_argv(ns, sys.executable, "-m", "hivemind_worker", *args),
                          env=env, capture_output=True, text=True, timeout=timeout)


def _start_hub(pair, node_pub: str) -> tuple[subprocess.Popen, str]:
    hub = subprocess.Popen(
        pair.exec_argv(pair.hub, sys.executable, str(HERE / "hub_proc.py"), node_pub, "10.88.0.2/32",
                       str(ECHO_PORT), str(LISTEN_PORT)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = hub.stdout.readline()
    assert line.startswith("READY"), hub.stderr.read()
    return hub, line.split()[1]


def _stop_hub(hub: subprocess.Popen) -> None:
    hub.stdin.close()
    assert hub.wait(timeout=30) == 0
    assert "HUB DOWN" in hub.stdout.read()


def _enroll_files(config_dir: Path, pair, hub_pub: str) -> str:
    node = generate_keypair()
    assignment = VpnAssignment(
        address="10.88.0.2/32", server_public_key=hub_pub, endpoint=f"{pair.hub_ip}:{LISTEN_PORT}",
        allowed_ips=("10.88.0.0/24",), persistent_keepalive_s=25, master_address=f"10.88.0.1:{ECHO_PORT}",
    )
    save_identity(config_dir, NodeIdentity("node-1", "hmc_secret_credential", f"10.88.0.1:{ECHO_PORT}", False, assignment))
    atomic_write(wg_key_path(config_dir), node.private_key + "\n", 0o600)
    return node.public_key


def _tcp_through(pair) -> str:
    code = ("import socket;s=socket.create_connection(('10.88.0.1',%d),timeout=5);"
            "s.sendall(b'hello');print(s.recv(100).decode())" % ECHO_PORT)
    done = subprocess.run(pair.exec_argv(pair.node, sys.executable, "-c", code), capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_up_tcp_down_idempotent(netns_pair, tmp_path):
    config_dir = tmp_path / "etc"
    # The hub must know the node's key first: make the node's key pair, then the hub.
    node = generate_keypair()
    hub, hub_pub = _start_hub(netns_pair, node.public_key)
    try:
        assignment = VpnAssignment(
            address="10.88.0.2/32", server_public_key=hub_pub, endpoint=f"{netns_pair.hub_ip}:{LISTEN_PORT}",
            allowed_ips=("10.88.0.0/24",), persistent_keepalive_s=25, master_address=f"10.88.0.1:{ECHO_PORT}",
        )
        save_identity(config_dir, NodeIdentity("node-1", "hmc_secret", f"10.88.0.1:{ECHO_PORT}", False, assignment))
        atomic_write(wg_key_path(config_dir), node.private_key + "\n", 0o600)

        first = _cli(netns_pair, netns_pair.node, config_dir, "up", "--handshake-timeout", "15")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "wg0: up (wg0.conf written from the stored assignment)" in first.stdout
        assert f"master 10.88.0.1:{ECHO_PORT} answers through the tunnel" in first.stdout
        conf = config_dir / "wg0.conf"
        assert conf.stat().st_mode & 0o777 == 0o600
        assert "AllowedIPs = 10.88.0.0/24" in conf.read_text()  # split tunnel

        assert _tcp_through(netns_pair) == "echo:hello"

        # The doctor sees the same healthy tunnel.
        # (a generous bound: on a loaded 2-core machine Python start-up alone can take seconds)
        doctor = _cli(netns_pair, netns_pair.node, config_dir, "doctor", "--json", "--timeout", "20")
        assert doctor.stdout.startswith("{"), doctor.stdout + doctor.stderr
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["wg0.conf"]["outcome"] == "PASS", checks["wg0.conf"]
        assert "split tunnel (10.88.0.0/24)" in checks["wg0.conf"]["detail"]
        assert checks["wireguard tunnel"]["outcome"] == "PASS", checks["wireguard tunnel"]
        assert f"with {netns_pair.hub_ip}:{LISTEN_PORT}" in checks["wireguard tunnel"]["detail"]

        # Only the VPN subnet goes through wg0; the default route does not.
        routes = subprocess.run(netns_pair.exec_argv(netns_pair.node, "ip", "route"), capture_output=True, text=True).stdout
        assert "10.88.0.0/24 dev wg0" in routes and "default" not in routes

        again = _cli(netns_pair, netns_pair.node, config_dir, "up")
        assert again.returncode == 0 and "wg0: already up" in again.stdout, again.stdout + again.stderr

        down = _cli(netns_pair, netns_pair.node, config_dir, "down")
        assert down.returncode == 0 and "wg0: down" in down.stdout, down.stderr
        down2 = _cli(netns_pair, netns_pair.node, config_dir, "down")
        assert down2.returncode == 0 and "wg0: already down" in down2.stdout, down2.stderr
    finally:
        _stop_hub(hub)


def test_corrupted_conf_reports_line(netns_pair, tmp_path):
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    node, hub = generate_keypair(), generate_keypair()
    text = (
        "[Interface]\n"
        f"PrivateKey = {node.private_key}\n"
        "Address = 10.88.0.2/32\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {hub.public_key}\n"
        "Endpoint = 192.0.2.1:51820\n"
        "AllowedIPs = 10.88.0.0/33\n"
    )
    atomic_write(config_dir / "wg0.conf", text, 0o600)
    done = _cli(netns_pair, netns_pair.node, config_dir, "up")
    assert done.returncode == 9
    assert "wg0.conf line 8: AllowedIPs: '10.88.0.0/33' is not an IP address or CIDR" in done.stderr
    links = subprocess.run(netns_pair.exec_argv(netns_pair.node, "ip", "link"), capture_output=True, text=True).stdout
    assert "wg0" not in links


def test_no_handshake_is_bounded(netns_pair, tmp_path):
    """Nobody listens at the endpoint: `up` fails within its bound and says so."""
    config_dir = tmp_path / "etc"
    hub = generate_keypair()
    _enroll_files(config_dir, netns_pair, hub.public_key)
    done = _cli(netns_pair, netns_pair.node, config_dir, "up", "--handshake-timeout", "3", timeout=40)
    assert done.returncode == 9, done.stdout + done.stderr
    assert "no handshake with 192.0.2.1:51820 within 3s" in done.stderr
    assert _cli(netns_pair, netns_pair.node, config_dir, "down").returncode == 0
