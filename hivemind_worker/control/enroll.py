"""The Enroll call: pin the master's CA, present the token, get an identity."""

from __future__ import annotations

import asyncio

import grpc

from hivemind_worker.address import MasterAddress
from hivemind_worker.control.channel import fetch_pinned_ca, open_channel
from hivemind_worker.control.errors import translate
from hivemind_worker.errors import ConfigError
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as rpc

ENROLL_TIMEOUT_S = 30.0


async def enroll(
    address: MasterAddress,
    token: str,
    ca_hash: str | None,
    facts: pb.NodeFacts,
    public_key: str,
    max_message_bytes: int,
) -> tuple[pb.EnrollResponse, bytes | None]:
    """Returns the master's answer and the pinned CA (PEM; None on plain loopback)."""
    ca_pem = None
    if address.tls:
        if not ca_hash:
            raise ConfigError(
                "--ca-hash is required: it pins the master's CA so the token is never sent to an impostor; "
                "the master prints it (`hivemind-worker dev-master ca-hash`)"
            )
        ca_pem = await asyncio.to_thread(fetch_pinned_ca, address, ca_hash)
    channel = open_channel(address, ca_pem, max_message_bytes)
    try:
        stub = rpc.NodeControlStub(channel)
        reply = await stub.Enroll(
            pb.EnrollRequest(token=token, facts=facts, wireguard_public_key=public_key),
            timeout=ENROLL_TIMEOUT_S,
        )
    except grpc.RpcError as exc:
        raise translate(exc, "enrollment", address.target, enrolling=True) from exc
    finally:
        await channel.close()
    return reply, ca_pem
