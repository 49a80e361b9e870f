"""Signed usage records at a real dev-master over loopback gRPC, with real Ed25519 keys:
the node's key at enrollment or first hello, the record verified with the result,
every tamper refused with its reason and nothing stored, the reward from the record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hivemind_worker import usage
from hivemind_worker.devmaster import registry, taskdb
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as pb_grpc
from tests.conftest import cli
from tests.integration.devmaster.peer import FakeNode, wait_for
from tests.integration.devmaster.test_tasks import MiB, queue


def node_key(node_id: str, db) -> bytes | None:
    return db.execute("SELECT usage_public_key FROM nodes WHERE node_id=?", (node_id,)).fetchone()[0]


async def keyed_node(master, token, key: Ed25519PrivateKey, hostname: str = "keyed") -> FakeNode:
    node = FakeNode(master, hostname, usage_key=usage.public_key_bytes(key))
    await node.enroll(token())
    await node.connect()
    return node


def record_for(node: FakeNode, task_id: str, data: bytes, attempt: int = 1, **changes) -> dict:
    """A record with known figures: 60 s on 1 core using 30 CPU-seconds (50 %), memory on
    average 128 MiB of 256 MiB (50 %), no GPU."""
    return {
        "version": 1, "node_id": node.node_id, "task_id": task_id, "attempt": attempt,
        "image_digest": "sha256:" + "ab" * 32, "bundle_sha256": "",
        "result_sha256": hashlib.sha256(data).hexdigest(), "result_bytes": len(data),
        "state": "exited", "exit_code": 0, "reason": "", "started_ms": 1_700_000_000_000,
        "ended_ms": 1_700_000_060_000, "cpu_seconds": 30.0, "memory_peak_bytes": 200 * MiB,
        "memory_avg_bytes": 128 * MiB, "cpu_limit_millicores": 1000, "memory_limit_bytes": 256 * MiB,
        "gpus": [], **changes,
    }


def signed(record: dict, key: Ed25519PrivateKey) -> pb.SignedUsage:
    s = usage.sign(record, key)
    return pb.SignedUsage(record=s.record, signature=s.signature)


# Hand-computed from the formula: cpu 100*30/(60*1) = 50, memory 50, average 50 is not
# > 50, so the multiplier is 1.0: int(10 * 1.0 + 0) = 10 per report, 60 s = 2 reports.
EXPECTED_REWARD = 20.0


async def test_enrollment_stores_the_key_and_refuses_a_bad_one(master, token, db):
    key = Ed25519PrivateKey.generate()
    node = await keyed_node(master, token, key)
    assert node_key(node.node_id, db) == usage.public_key_bytes(key)
    listed = {n["node_id"]: n for n in registry.list_nodes(db)}
    assert listed[node.node_id]["usage_public_key"] == usage.public_key_bytes(key).hex()

    spare = token()
    bad = FakeNode(master, "bad-key", usage_key=b"\x01" * 31)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bad.enroll(spare)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "usage public key is 31 bytes" in err.value.details()
    bad.usage_key = usage.public_key_bytes(Ed25519PrivateKey.generate())
    await bad.enroll(spare)  # the refusal did not spend the token
    assert bad.node_id
    await asyncio.gather(node.close(), bad.close())


async def test_hello_key_is_trusted_on_first_use_and_never_replaced(master, make_node, db, caplog):
    caplog.set_level(logging.INFO, logger="hivemind_worker.devmaster.registry")
    node = await make_node("old-node", connect=False)  # enrolled by a version without records
    assert node_key(node.node_id, db) is None
    first = usage.public_key_bytes(Ed25519PrivateKey.generate())
    await node.connect(usage_key=first)
    await wait_for(lambda: node_key(node.node_id, db) == first, what="the hello's key on file")
    assert any("trust on first use" in r.getMessage() for r in caplog.records)

    await node.close()
    again = FakeNode(master, "old-node")
    again.node_id, again.credential = node.node_id, node.credential
    other = usage.public_key_bytes(Ed25519PrivateKey.generate())
    await again.connect(usage_key=other)
    await wait_for(lambda: [r for r in caplog.records if r.levelno == logging.WARNING
                            and "is on file; the key on file is kept" in r.getMessage()],
                   what="the warning about a different key")
    assert node_key(node.node_id, db) == first
    await again.close()


async def test_signed_record_is_stored_with_its_reward(master, token, db):
    key = Ed25519PrivateKey.generate()
    node = await keyed_node(master, token, key)
    task_id = queue(master)
    await node.recv_kind("assign")
    data = os.urandom(200_000)
    record = record_for(node, task_id, data)
    proof = signed(record, key)
    digest = hashlib.sha256(data).hexdigest()
    # Resumed: the second call carries the record again, as a node sends it on every call.
    assert not (await node.upload(task_id, data, digest, end=100_000, usage=proof)).complete
    reply = await node.upload(task_id, data, digest, offset=100_000, usage=proof)
    assert reply.complete and master.state.result(task_id).read_bytes() == data

    row = taskdb.get_task(db, task_id)
    assert row["usage_record"] == proof.record and row["usage_signature"] == proof.signature
    assert row["reward"] == EXPECTED_REWARD == usage.reward(record)
    state = str(master.state.root)
    listed = json.loads((await asyncio.to_thread(cli, "dev-master", "tasks", "--json", "--state-dir", state)).stdout)
    shown = next(t for t in listed if t["task_id"] == task_id)
    assert shown["usage"] == record and shown["reward"] == EXPECTED_REWARD
    assert shown["usage_signature"] == proof.signature.hex()
    table = (await asyncio.to_thread(cli, "dev-master", "tasks", "--state-dir", state)).stdout.splitlines()
    assert table[0].split()[7] == "REWARD" and table[-1].split()[7] == "20.00"
    await node.close()


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1:]


def same(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# name: (how the upload is made from a good one -> (record, bytes sent, sha256 announced),
#        what the refusal says). The second half of the archive goes in the refused call.
TAMPERS = {
    "flipped byte in the record": (
        lambda r, key, data: (pb.SignedUsage(record=flip(signed(r, key).record, 10),
                                             signature=signed(r, key).signature), data, same(data)),
        "signature does not verify"),
    "signed by another key": (
        lambda r, key, data: (signed(r, Ed25519PrivateKey.generate()), data, same(data)),
        "signature does not verify"),
    "another task": (
        lambda r, key, data: (signed({**r, "task_id": "task-other"}, key), data, same(data)),
        "task_id is 'task-other'"),
    "another attempt": (
        lambda r, key, data: (signed({**r, "attempt": 2}, key), data, same(data)), "attempt is 2"),
    "another node": (
        lambda r, key, data: (signed({**r, "node_id": "node-other"}, key), data, same(data)),
        "node_id is 'node-other'"),
    # The archive altered on the way: found when it is whole, by the signed record.
    "result bytes altered in transit": (
        lambda r, key, data: (signed(r, key), flip(data, 200_000), same(data)),
        "the archive received is not the one the node signed for"),
    # ... also when the (unsigned) announced sha256 was fixed up to match: at the first chunk.
    "result bytes and announced sha256 altered": (
        lambda r, key, data: (signed(r, key), flip(data, 200_000), same(flip(data, 200_000))),
        "result_sha256 is"),
    "result size altered": (
        lambda r, key, data: (signed(r, key), data + b"x", same(data + b"x")), "result_sha256 is"),
    "no record from a node with a key": (
        lambda r, key, data: (None, data, same(data)), "none came"),
}


@pytest.mark.parametrize("name", list(TAMPERS))
async def test_tampered_upload_is_refused_and_nothing_is_stored(master, token, db, name):
    key = Ed25519PrivateKey.generate()
    node = await keyed_node(master, token, key)
    task_id = queue(master)
    await node.recv_kind("assign")
    data = os.urandom(300_000)
    make, reason = TAMPERS[name]
    proof, sent, announced = make(record_for(node, task_id, data), key, data)
    # Half of it first, honestly: the refused call must also discard what was held.
    good = signed(record_for(node, task_id, data), key)
    await node.upload(task_id, data, hashlib.sha256(data).hexdigest(), end=150_000, usage=good)
    assert master.state.result_part(task_id).stat().st_size == 150_000

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.upload(task_id, sent, announced, offset=150_000, usage=proof)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("usage record refused: ") and reason in err.value.details()
    assert "upload again from offset 0" in err.value.details()
    assert not master.state.result_part(task_id).exists() and not master.state.result(task_id).exists()
    row = taskdb.get_task(db, task_id)
    assert (row["result_complete"], row["usage_record"], row["reward"]) == (0, None, None)

    reply = await node.upload(task_id, data, hashlib.sha256(data).hexdigest(), usage=good)  # from 0, honest
    assert reply.complete and taskdb.get_task(db, task_id)["reward"] == EXPECTED_REWARD
    await node.close()


async def test_bad_signature_is_refused_at_the_first_chunk(master, token, db):
    """A record that does not verify is refused before the archive is taken: a node
    sending a 256 MiB result as fast as it can is answered after the master's bounded
    drain (64 MiB), not after the whole of it, and nothing is written."""
    key = Ed25519PrivateKey.generate()
    node = await keyed_node(master, token, key)
    task_id = queue(master)
    await node.recv_kind("assign")
    block, total = os.urandom(MiB), 256 * MiB
    forged = signed(record_for(node, task_id, b"", result_sha256="0" * 64, result_bytes=total),
                    Ed25519PrivateKey.generate())
    sent = 0

    def chunks():
        nonlocal sent
        for offset in range(0, total, MiB):
            yield pb.ResultChunk(task_id=task_id, offset=offset, data=block, total_bytes=total, sha256="0" * 64,
                                 attempt=1, usage=forged if offset == 0 else None)
            sent += 1

    def upload() -> grpc.RpcError:
        # The blocking client: grpc.aio's may report INTERNAL "Failed execute_batch" in
        # place of the status a server sent while the client was still writing
        # (grpc/grpc#36066); the blocking client reports the server's status.
        creds = grpc.ssl_channel_credentials(root_certificates=master.ca_pem())
        with grpc.secure_channel(master.address, creds) as sync_channel:
            stub = pb_grpc.NodeControlStub(sync_channel)
            try:
                stub.UploadResult(chunks(), metadata=node.meta, timeout=60)
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("the forged record was taken")

    err = await asyncio.to_thread(upload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert "signature does not verify" in err.details()
    assert sent < 100, f"{sent} MiB sent before the refusal"
    assert not master.state.result_part(task_id).exists()
    await node.close()


async def test_node_without_a_key_is_taken_without_a_record(master, make_node, db, caplog):
    caplog.set_level(logging.WARNING, logger="hivemind_worker.devmaster.usagecheck")
    node = await make_node()
    task_id = queue(master)
    await node.recv_kind("assign")
    data = os.urandom(10_000)
    assert (await node.upload(task_id, data, hashlib.sha256(data).hexdigest())).complete
    row = taskdb.get_task(db, task_id)
    assert (row["result_complete"], row["usage_record"], row["reward"]) == (1, None, None)
    assert any("no usage key on file" in r.getMessage() for r in caplog.records)
    await node.close()
