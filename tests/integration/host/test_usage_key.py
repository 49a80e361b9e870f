"""The node's usage key against a real gRPC master on loopback (the generated
NodeControl servicer, remembering what the node sends): `hivemind-worker enroll`
makes the key on the node (usage.key, 0600) and sends only its public half; a node
enrolled before usage records (no usage.key) makes one when the daemon starts and
sends it in its hello; the private key shows up in no message and no log line."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from hivemind_worker import usage
from hivemind_worker.identity import load_usage_key
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as rpc
from tests.conftest import cli
from tests.support.stack import Node

CREDENTIAL = "hmc_" + "k" * 40


class RecordingMaster(rpc.NodeControlServicer):
    """Enrolls anyone; welcomes every session; remembers the enroll requests and hellos."""

    def __init__(self) -> None:
        self.enrolls: list[pb.EnrollRequest] = []
        self.hellos: list[pb.Hello] = []
        self.seen = threading.Condition()

    def Enroll(self, request, context):
        with self.seen:
            self.enrolls.append(request)
            self.seen.notify_all()
        return pb.EnrollResponse(node_id="node-k", node_credential=CREDENTIAL)

    def Connect(self, request_iterator, context):
        first = next(request_iterator)
        with self.seen:
            self.hellos.append(first.hello)
            self.seen.notify_all()
        yield pb.MasterMessage(welcome=pb.Welcome(session_id="s", server_time_ms=int(time.time() * 1000)))
        for _ in request_iterator:  # telemetry and the rest: not this test's business
            pass

    def wait_for(self, predicate, timeout: float = 60) -> None:
        with self.seen:
            assert self.seen.wait_for(predicate, timeout), "the master did not hear it in time"


@pytest.fixture
def master():
    servicer = RecordingMaster()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_NodeControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"http://127.0.0.1:{port}"  # plain text: loopback only
    try:
        yield servicer
    finally:
        server.stop(grace=None)


@pytest.mark.docker
def test_enroll_sends_the_public_half_and_an_older_node_sends_its_new_key_in_the_hello(master, tmp_path, docker_client):
    node = Node(tmp_path / "node")
    done = cli("enroll", "--master", master.address, "--token", "hmt_" + "t" * 30, env=node.env)
    assert done.returncode == 0, done.stderr
    key_file = node.config_dir / "usage.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    pem = key_file.read_bytes()
    enrolled = usage.public_key_bytes(load_usage_key(key_file).private())
    sent = master.enrolls[-1]
    assert sent.usage_public_key == enrolled and len(enrolled) == 32
    assert pem not in sent.SerializeToString() and b"PRIVATE" not in sent.SerializeToString()

    key_file.unlink()  # as a node enrolled by a version before usage records
    node.start()
    try:
        master.wait_for(lambda: master.hellos)
        made = usage.public_key_bytes(load_usage_key(key_file).private())
        assert made != enrolled
        assert master.hellos[0].usage_public_key == made and master.hellos[0].node_id == "node-k"
        assert key_file.stat().st_mode & 0o777 == 0o600
    finally:
        node.stop()
    log = node.log.read_text()
    assert "made this node's usage key" in log
    assert "PRIVATE KEY" not in log and key_file.read_text().splitlines()[2] not in log
