"""A hostile master: a real gRPC server on loopback (the generated NodeControl
servicer) answers Enroll with crafted values. Every crafted assignment is refused
with a reason naming the field, and nothing is written on the host: no node.json,
no wireguard.key, no wg0.conf. A well-formed answer still enrolls, with the master's
DNS ignored unless the operator allows it."""

from __future__ import annotations

import asyncio
import os
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from hivemind_worker.agent.enrollment import enroll_node
from hivemind_worker.config import Settings
from hivemind_worker.control.enroll import NodeFacts
from hivemind_worker.errors import EnrollmentError, ProtocolError
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as rpc
from hivemind_worker.vpn.keys import generate_keypair
from tests.conftest import cli

HUB = generate_keypair()
FACTS = NodeFacts(hostname="victim", cpu_cores=2, memory_bytes=1 << 30, agent_version="test", os="Debian", arch="x86_64")
CREDENTIAL = "hmc_" + "c" * 40


def good_vpn(**changes) -> pb.VpnAssignment:
    fields = dict(address="10.88.0.2/32", server_public_key=HUB.public_key, endpoint="192.0.2.1:51820",
                  allowed_ips=["10.88.0.0/24"], persistent_keepalive_s=25, master_address="10.88.0.1:50051")
    fields.update(changes)
    return pb.VpnAssignment(**fields)


class HostileMaster(rpc.NodeControlServicer):
    """Answers every Enroll with ``self.reply``; remembers what the node sent."""

    def __init__(self) -> None:
        self.reply = pb.EnrollResponse()
        self.requests: list[pb.EnrollRequest] = []

    def Enroll(self, request, context):
        self.requests.append(request)
        return self.reply


@pytest.fixture
def hostile_master():
    servicer = HostileMaster()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_send_message_length", 64 << 20)])
    rpc.add_NodeControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"http://127.0.0.1:{port}"  # plain text: loopback only
    try:
        yield servicer
    finally:
        server.stop(grace=None)


def node_settings(tmp_path: Path, **kw) -> Settings:
    return Settings(config_dir=tmp_path / "etc", state_dir=tmp_path / "state", **kw)


def written(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


HUGE = "9" * (1 << 20)  # within the message limit: the node's own checks must stop it

# (the crafted answer, the field the node must name, more of its reason)
CRAFTED = {
    "dns PreUp injection": (good_vpn(dns=["10.88.0.1\nPreUp = id > /root/pwned"]), "dns[0]", "U+000A"),
    "address PostUp injection": (good_vpn(address="10.88.0.2/32\nPostUp = id > /root/pwned"), "address", "U+000A"),
    "IPv6 scope id with a newline": (good_vpn(address="fd00::2%wg\nPreUp = id/128", allowed_ips=["fd00::/64"]),
                                     "address", "U+000A"),
    "IPv6 scope id": (good_vpn(address="fd00::2%eth0/128", allowed_ips=["fd00::/64"]), "address", "scope id"),
    "allowed_ips PostDown injection": (good_vpn(allowed_ips=["10.88.0.0/24\nPostDown = id"]), "allowed_ips[0]", "U+000A"),
    "allowed_ips scope id": (good_vpn(address="fd00::2/128", allowed_ips=["fd00::%1\nPreUp = id/64"]),
                             "allowed_ips[0]", "U+000A"),
    "endpoint injection": (good_vpn(endpoint="192.0.2.1:51820\nPreUp = id"), "endpoint", "U+000A"),
    "endpoint shell": (good_vpn(endpoint="$(id):51820"), "endpoint", "neither an IP address nor a host name"),
    "full tunnel": (good_vpn(allowed_ips=["0.0.0.0/0"]), "allowed_ips", "takes all of the host's traffic"),
    "LAN route": (good_vpn(allowed_ips=["10.88.0.0/24", "192.168.0.0/16"]), "allowed_ips", "beyond the VPN subnet"),
    "bad key": (good_vpn(server_public_key="bm90IGEga2V5"), "server_public_key", "not a base64 32-byte key"),
    "huge address": (good_vpn(address=HUGE), "address", "characters, more than"),
    "huge allowed_ips list": (good_vpn(allowed_ips=["10.88.0.0/24"] * 5000), "allowed_ips", "5000 entries"),
    "huge keepalive": (good_vpn(persistent_keepalive_s=4_000_000_000), "persistent_keepalive_s", "is not 0-3600"),
    "master_address off the tunnel": (good_vpn(master_address="127.0.0.1:22"), "master_address", "through the tunnel"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_assignment_is_refused_and_nothing_written(hostile_master, tmp_path, case):
    vpn, field, reason = CRAFTED[case]
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL, vpn=vpn)
    settings = node_settings(tmp_path)
    with pytest.raises(EnrollmentError) as info:
        asyncio.run(enroll_node(settings, hostile_master.address, "hmt_token", None, FACTS))
    message = str(info.value)
    assert f"{field}: " in message and reason in message, message
    assert "Nothing was written" in message and "ask the master's operator" in message
    assert hostile_master.requests, "the master was asked"
    assert written(tmp_path) == []


def test_reply_over_the_message_limit_is_refused(hostile_master, tmp_path):
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL,
                                             vpn=good_vpn(address="9" * (8 << 20)))
    with pytest.raises(ProtocolError, match="message too large"):
        asyncio.run(enroll_node(node_settings(tmp_path), hostile_master.address, "hmt_token", None, FACTS))
    assert written(tmp_path) == []


@pytest.mark.parametrize(("reply", "reason"), [
    (pb.EnrollResponse(node_id="../../etc/passwd", node_credential=CREDENTIAL), "unusable node_id"),
    (pb.EnrollResponse(node_id="node-1\nx", node_credential=CREDENTIAL), "unusable node_id"),
    (pb.EnrollResponse(node_id="node-1", node_credential="short"), "unusable node_credential"),
    (pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL + "\r\nX-Evil: 1"), "unusable node_credential"),
    (pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL, heartbeat_interval_s=4_000_000_000),
     "unusable heartbeat_interval_s"),
])
def test_crafted_identity_is_refused(hostile_master, tmp_path, reply, reason):
    hostile_master.reply = reply
    with pytest.raises(EnrollmentError, match=reason):
        asyncio.run(enroll_node(node_settings(tmp_path), hostile_master.address, "hmt_token", None, FACTS))
    assert written(tmp_path) == []


def test_cli_refuses_the_dns_injection_and_writes_nothing(hostile_master, tmp_path):
    """The issue's exploit, end to end through `hivemind-worker enroll`."""
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL,
                                             vpn=good_vpn(dns=["10.88.0.1\nPreUp = id > /root/pwned"]))
    env = {"HIVEMIND_CONFIG_DIR": str(tmp_path / "etc"), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = cli("enroll", "--master", hostile_master.address, "--token", "hmt_token", env=env)
    assert done.returncode != 0
    assert "dns[0]: contains the control or non-ASCII character U+000A" in done.stderr, done.stderr
    assert "PreUp" not in done.stdout
    assert written(tmp_path) == []


def test_well_formed_answer_enrolls_and_dns_is_the_operators_call(hostile_master, tmp_path):
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL,
                                             vpn=good_vpn(dns=["10.88.0.1"]))
    result = asyncio.run(enroll_node(node_settings(tmp_path), hostile_master.address, "hmt_token", None, FACTS))
    conf = (tmp_path / "etc" / "wg0.conf").read_text()
    assert "DNS" not in conf and "AllowedIPs = 10.88.0.0/24" in conf
    assert {p.name for p in result.files} == {"wireguard.key", "usage.key", "wg0.conf", "node.json"}
    sent = hostile_master.requests[-1]
    assert sent.facts.hostname == "victim" and sent.wireguard_public_key

    allowed = tmp_path / "allowed"
    asyncio.run(enroll_node(node_settings(allowed, vpn_allow_dns=True), hostile_master.address, "hmt_token", None, FACTS))
    assert "DNS = 10.88.0.1\n" in (allowed / "etc" / "wg0.conf").read_text()


def test_full_tunnel_when_the_operator_allows_it(hostile_master, tmp_path):
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL,
                                             vpn=good_vpn(allowed_ips=["0.0.0.0/0"]))
    asyncio.run(enroll_node(node_settings(tmp_path, vpn_allow_full_tunnel=True), hostile_master.address,
                            "hmt_token", None, FACTS))
    assert "AllowedIPs = 0.0.0.0/0" in (tmp_path / "etc" / "wg0.conf").read_text()


@pytest.mark.root
def test_wireguard_config_path_from_a_file_the_service_user_owns(hostile_master, tmp_path):
    """worker.toml owned by someone else cannot send root's write elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL, vpn=good_vpn())
    etc = tmp_path / "etc"
    etc.mkdir()
    target = tmp_path / "elsewhere" / "wg0.conf"
    toml = etc / "worker.toml"
    toml.write_text(f'wireguard_config_path = "{target}"\n')
    os.chown(toml, 65534, 65534)
    env = {"HIVEMIND_CONFIG_DIR": str(etc), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = cli("enroll", "--master", hostile_master.address, "--token", "hmt_token", env=env)
    assert done.returncode != 0
    assert f"{toml} (owner uid 65534" in done.stderr and "chown root:" in done.stderr, done.stderr
    assert not hostile_master.requests, "refused before the token was spent"
    assert written(tmp_path) == ["etc/worker.toml"]

    os.chown(toml, 0, 0)  # the operator's own file: honoured
    done = cli("enroll", "--master", hostile_master.address, "--token", "hmt_token", env=env)
    assert done.returncode == 0, done.stderr
    assert target.exists() and not (etc / "wg0.conf").exists()


@pytest.mark.root
def test_vpn_policy_only_from_a_file_root_owns(hostile_master, tmp_path):
    """A worker.toml the service user could write cannot open the full tunnel for a root-run enroll."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    hostile_master.reply = pb.EnrollResponse(node_id="node-1", node_credential=CREDENTIAL,
                                             vpn=good_vpn(allowed_ips=["0.0.0.0/0"]))
    etc = tmp_path / "etc"
    etc.mkdir()
    toml = etc / "worker.toml"
    toml.write_text("vpn_allow_full_tunnel = true\n")
    os.chown(toml, 65534, 65534)
    env = {"HIVEMIND_CONFIG_DIR": str(etc), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = cli("enroll", "--master", hostile_master.address, "--token", "hmt_token", env=env)
    assert done.returncode != 0
    assert f"{toml} sets vpn_allow_full_tunnel but is owned by uid 65534" in done.stderr, done.stderr
    assert not hostile_master.requests and written(tmp_path) == ["etc/worker.toml"]
