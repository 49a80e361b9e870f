"""Enrollment, CA pinning, authentication and the Connect session against a real
dev-master over loopback gRPC with TLS."""

from __future__ import annotations

import asyncio
import hashlib
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hivemind_worker.devmaster import ca, registry
from hivemind_worker.devmaster.db import open_db
from hivemind_worker.proto import worker_pb2 as pb
from tests.integration.devmaster.peer import FakeNode, wg_key


async def test_get_ca_returns_the_pinned_ca(master, make_node):
    node = FakeNode(master)
    reply = await node.stub.GetCA(pb.GetCARequest())
    await node.close()
    der = x509.load_pem_x509_certificate(reply.ca_pem).public_bytes(Encoding.DER)
    assert "sha256:" + hashlib.sha256(der).hexdigest() == ca.ca_hash(master.state) == master.master.ca_hash
    assert master.state.ca_key.stat().st_mode & 0o077 == 0
    assert master.state.server_key.stat().st_mode & 0o077 == 0


async def test_enroll_returns_identity_and_vpn(master, token, db):
    node = FakeNode(master, "alpha")
    reply = await node.enroll(token())
    await node.close()
    assert reply.node_id.startswith("node-") and reply.node_credential.startswith("hmc_")
    assert reply.vpn.address == "10.88.0.2/32"
    assert list(reply.vpn.allowed_ips) == ["10.88.0.0/24"]
    assert reply.heartbeat_interval_s == 30
    assert abs(reply.server_time_ms / 1000 - time.time()) < 5
    [row] = registry.list_nodes(db)
    assert row["hostname"] == "alpha" and row["session_state"] == "never"
    # Only hashes of secrets are stored.
    assert reply.node_credential.encode() not in master.state.db.read_bytes()


@pytest.mark.parametrize("case, needle", [
    ("unknown", "enrollment token not recognised"),
    ("expired", "enrollment token expired; create a new one with `hivemind-worker dev-master token create`"),
    ("reused", "enrollment token already used"),
])
async def test_enroll_refusals_say_what_to_do(master, token, case, needle):
    node = FakeNode(master)
    try:
        if case == "unknown":
            tok = "hmt_not-a-token"
        elif case == "expired":
            tok = token(ttl_s=0.2)
            await asyncio.sleep(0.4)
        else:
            tok = token(uses=1)
            await FakeNode(master).enroll(tok)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node.enroll(tok)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert needle in err.value.details()
    finally:
        await node.close()


async def test_token_with_two_uses_enrolls_two_nodes(master, token):
    tok = token(uses=2)
    a, b = FakeNode(master, "a"), FakeNode(master, "b")
    ra, rb = await a.enroll(tok), await b.enroll(tok)
    assert ra.node_id != rb.node_id and ra.vpn.address != rb.vpn.address
    with pytest.raises(grpc.aio.AioRpcError):
        await FakeNode(master).enroll(tok)
    await a.close()
    await b.close()


async def test_bad_wireguard_key_is_refused(master, token):
    node = FakeNode(master)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.stub.Enroll(pb.EnrollRequest(token=token(), wireguard_public_key="nope"))
    await node.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_calls_without_a_valid_credential_are_refused(master, make_node):
    node = await make_node(connect=False)
    node.credential = "hmc_wrong"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.stub.ResultOffset(pb.ResultOffsetRequest(task_id="x"), metadata=node.meta)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "re-enroll this node" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.connect()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_hello_welcome_telemetry_and_leaving(master, make_node, db):
    node = await make_node("beta")
    assert node.welcome.session_id.startswith("sess-") and node.welcome.report_interval_s == 0
    await node.send(telemetry=pb.TelemetryReport(time_ms=1, cpu_percent=12.5, memory_percent=40))

    def record():
        return next(r for r in registry.list_nodes(db) if r["node_id"] == node.node_id)

    for _ in range(50):
        if record()["last_telemetry"]:
            break
        await asyncio.sleep(0.05)
    rec = record()
    assert rec["session_state"] == "connected" and rec["last_report_at"]
    assert rec["last_telemetry"]["cpu_percent"] == 12.5
    assert rec["capacity"]["cpu_millicores"] == 4000
    node.done_writing()
    for _ in range(50):
        if record()["session_state"] == "disconnected":
            break
        await asyncio.sleep(0.05)
    assert record()["session_state"] == "disconnected"
    [session] = db.execute("SELECT * FROM sessions WHERE node_id=?", (node.node_id,)).fetchall()
    assert session["disconnected_at"] >= session["connected_at"]


async def test_first_message_must_be_hello(master, make_node):
    node = await make_node(connect=False)

    async def requests():
        yield pb.WorkerMessage(drain=pb.Drain(draining=True))
        await asyncio.sleep(5)

    call = node.stub.Connect(requests(), metadata=node.meta)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_revoke_ends_the_open_stream(master, make_node, db):
    node = await make_node()
    assert registry.revoke(db, node.node_id)  # what `dev-master nodes revoke` does
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.recv(timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.connect()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_second_connect_replaces_the_first(master, make_node, db):
    node = await make_node()
    first = node.call
    await node.connect()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(first.read(), 5)
    assert err.value.code() == grpc.StatusCode.ABORTED
    await master.full_pass()
    [rec] = [r for r in registry.list_nodes(db) if r["node_id"] == node.node_id]
    assert rec["session_state"] == "connected"
    first.cancel()


async def test_oversize_message_is_refused_and_the_master_keeps_serving(tmp_path, token):
    from tests.integration.devmaster.peer import MasterThread

    small = MasterThread(tmp_path / "small", max_message_bytes=64 * 1024).start()
    try:
        node = FakeNode(small)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node.stub.Enroll(pb.EnrollRequest(
                token="hmt_x", wireguard_public_key=wg_key(), facts=pb.NodeFacts(hostname="h" * 200_000)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = await node.stub.GetCA(pb.GetCARequest())  # still serving
        assert reply.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        await node.close()

        # On the session stream: that stream ends, the node may connect again.
        db = open_db(small.state.db)
        node = FakeNode(small)
        await node.enroll(registry.create_token(db))
        await node.connect()
        await node.send(logs=pb.LogBatch(task_id="t", lines=[pb.LogLine(seq=1, text="x" * 100_000)]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node.recv(timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await node.connect()).session_id
        await node.close()
        db.close()
    finally:
        small.stop()
