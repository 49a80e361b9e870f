"""`dev-master serve --wireguard` with the real hub (wg-quick, wireguard-go) inside a
network namespace of its own: enrollment adds the node as a peer, revocation
removes it, SIGTERM takes the interface down. Needs root and wireguard-tools."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import cli, free_port

ENROLL = r"""
import base64, json, os, sys, grpc
from hivemind_worker.proto import worker_pb2 as pb, worker_pb2_grpc as g
address, ca_path, token = sys.argv[1:4]
ch = grpc.secure_channel(address, grpc.ssl_channel_credentials(open(ca_path, "rb").read()))
key = base64.b64encode(os.urandom(32)).decode()
r = g.NodeControlStub(ch).Enroll(pb.EnrollRequest(token=token, wireguard_public_key=key,
                                                 facts=pb.NodeFacts(hostname="wg-node")), timeout=20)
print(json.dumps({"key": key, "node_id": r.node_id, "address": r.vpn.address,
                  "server_key": r.vpn.server_public_key, "endpoint": r.vpn.endpoint}))
"""


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, WireGuard interface)")
    for tool in ("ip", "wg", "wg-quick"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install iproute2 wireguard-tools wireguard-go)")
    name = "hmdm" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_serve_with_a_real_wireguard_hub(netns, tmp_path):
    state, port, wg_port = tmp_path / "m", free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "hivemind_worker", "dev-master", "serve",
         "--state-dir", str(state), "--listen", f"127.0.0.1:{port}", "--wireguard", "--wg-port", str(wg_port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: serve.poll() is not None or (state / "master.json").exists(), 60, "serve to start")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        token = cli("dev-master", "token", "create", "--state-dir", str(state), check=True).stdout.strip()
        done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", ENROLL, f"127.0.0.1:{port}",
                               str(state / "ca.pem"), token], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["endpoint"] == f"127.0.0.1:{wg_port}" and reply["address"] == "10.88.0.2/32"
        hub_key = subprocess.run(["ip", "netns", "exec", netns, "wg", "show", "hm-hub0", "public-key"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert reply["server_key"] == hub_key

        def peers() -> str:
            return subprocess.run(["ip", "netns", "exec", netns, "wg", "show", "hm-hub0", "allowed-ips"],
                                  capture_output=True, text=True).stdout

        assert f"{reply['key']}\t10.88.0.2/32" in peers()
        cli("dev-master", "nodes", "revoke", reply["node_id"], "--state-dir", str(state), check=True)
        _wait(lambda: reply["key"] not in peers(), 10, "the revoked peer to leave the hub")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
        links = subprocess.run(["ip", "-n", netns, "link"], capture_output=True, text=True).stdout
        assert "hm-hub0" not in links
        assert (state / "wg-hub.key").stat().st_mode & 0o777 == 0o600
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)
        log.close()
