"""The whole VPN path: `dev-master serve --wireguard` (its WireGuardHub) in a hub
namespace, a node in another enrolls over the underlay, `hivemind-worker up`
brings the tunnel up, the daemon holds its session with the master *through the
tunnel* and runs a task, and `down` takes the tunnel away."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import TASK_IMAGE, cli, docker_available

MASTER_PORT = 50051  # inside the hub namespace only


def _image_present() -> bool:
    return docker_available() and subprocess.run(["docker", "image", "inspect", TASK_IMAGE],
                                                 capture_output=True).returncode == 0


def _in(pair, ns, *args, env=None, timeout=60, **kw):
    return subprocess.run(pair.exec_argv(ns, sys.executable, "-m", "hivemind_worker", *args),
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.skipif(not docker_available(), reason="needs a running Docker engine")
def test_session_through_devmaster_hub(netns_pair, tmp_path):
    state = tmp_path / "dev-master"
    master = subprocess.Popen(
        netns_pair.exec_argv(netns_pair.hub, sys.executable, "-m", "hivemind_worker", "dev-master", "serve",
                             "-s", str(state), "--listen", f"0.0.0.0:{MASTER_PORT}", "--wireguard",
                             "--wg-endpoint", netns_pair.hub_ip),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    node_env = {"HIVEMIND_CONFIG_DIR": str(tmp_path / "etc"), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
                "HIVEMIND_MONITOR_ENABLED": "false"}
    daemon = None
    try:
        ca_hash = None
        for _ in range(10):
            line = master.stdout.readline()
            if line.startswith("CA hash: "):
                ca_hash = line.split()[2]
                break
        assert ca_hash, master.stderr.read() if master.poll() is not None else "no CA hash printed"
        token = cli("dev-master", "token", "create", "-s", str(state), check=True).stdout.strip()

        # The dev-master's certificate names its host name (wildcard listen) but not the
        # --wg-endpoint address: the node dials the master by that name.
        netns_pair.hosts(netns_pair.node, {socket.gethostname(): netns_pair.hub_ip})
        enroll = _in(netns_pair, netns_pair.node, "enroll", "--master", f"{socket.gethostname()}:{MASTER_PORT}",
                     "--token", token, "--ca-hash", ca_hash, env=node_env)
        assert enroll.returncode == 0, enroll.stderr

        up = _in(netns_pair, netns_pair.node, "up", "--handshake-timeout", "15", env=node_env)
        assert up.returncode == 0, up.stderr
        assert f"master 10.88.0.1:{MASTER_PORT} answers through the tunnel" in up.stdout, up.stdout

        # The session goes to the master's tunnel address: only the VPN can carry it.
        daemon = subprocess.Popen(
            netns_pair.exec_argv(netns_pair.node, sys.executable, "-m", "hivemind_worker",
                                 "--master-url", f"10.88.0.1:{MASTER_PORT}", "run"),
            env={**os.environ, **node_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if _image_present():
            done = cli("submit", "-s", str(state), "--command", "echo hello through the tunnel", "--wait",
                       "--timeout", "60s", "-o", str(tmp_path / "out"), timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "hello through the tunnel" in done.stdout
        else:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                nodes = cli("dev-master", "nodes", "-s", str(state)).stdout
                if "connected" in nodes.lower() or "online" in nodes.lower():
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"the node never connected through the tunnel:\n{nodes}")

        status = subprocess.run(netns_pair.exec_argv(netns_pair.node, "wg", "show", "wg0", "transfer"),
                                capture_output=True, text=True).stdout.split()
        assert int(status[1]) > 3000 and int(status[2]) > 3000, status  # TLS + session bytes went through wg0
        shown = _in(netns_pair, netns_pair.node, "status", env=node_env)
        assert "Tunnel     peer" in shown.stdout and "handshake" in shown.stdout, shown.stdout + shown.stderr
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        down = _in(netns_pair, netns_pair.node, "down", env=node_env)
        master.terminate()
        try:
            master.wait(timeout=20)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
    assert down.returncode == 0 and "wg0: down" in down.stdout, down.stderr
