"""The Enroll call: pin the master's CA, present the token, get an identity.

The only place the enrollment messages are (de)serialised: the rest of the worker
speaks ``NodeFacts`` and ``EnrollReply``. The reply is checked for what this module
can judge (ids, credential, sizes); the VPN assignment is judged against the node's
policy by vpn/policy.py before anything is written.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import grpc

from hivemind_worker.address import MasterAddress
from hivemind_worker.control.channel import fetch_pinned_ca, open_channel
from hivemind_worker.control.errors import translate
from hivemind_worker.errors import ConfigError, EnrollmentError
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as rpc

ENROLL_TIMEOUT_S = 30.0
MAX_HEARTBEAT_S = 3600
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CREDENTIAL = re.compile(r"[\x21-\x7e]{16,4096}")  # printable, no spaces: it goes into a header


@dataclass(frozen=True)
class GpuFact:
    index: int
    uuid: str
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class NodeFacts:
    """What the node tells the master about itself at enrollment."""

    hostname: str
    cpu_cores: int
    memory_bytes: int
    agent_version: str
    os: str
    arch: str
    docker_version: str = ""
    nvidia_runtime: bool = False
    gpus: tuple[GpuFact, ...] = ()


@dataclass(frozen=True)
class EnrollReply:
    """The master's answer; ``vpn`` is as the master sent it, not yet accepted."""

    node_id: str
    node_credential: str
    vpn: VpnAssignment
    heartbeat_interval_s: int  # 0: the node's own report interval

    def __repr__(self) -> str:  # never print the credential
        return f"EnrollReply(node_id={self.node_id!r})"


def _facts_pb(facts: NodeFacts) -> pb.NodeFacts:
    msg = pb.NodeFacts(
        hostname=facts.hostname, cpu_cores=facts.cpu_cores, memory_bytes=facts.memory_bytes,
        agent_version=facts.agent_version, os=facts.os, arch=facts.arch,
        docker_version=facts.docker_version, nvidia_runtime=facts.nvidia_runtime,
    )
    for gpu in facts.gpus:
        msg.gpus.add(index=gpu.index, uuid=gpu.uuid, name=gpu.name, memory_bytes=gpu.memory_bytes)
    return msg


def reply_from_pb(reply: pb.EnrollResponse, target: str) -> EnrollReply:
    """The typed reply. EnrollmentError when the master's ids cannot be stored safely."""
    def refuse(field: str, why: str) -> EnrollmentError:
        return EnrollmentError(f"the master at {target} sent an unusable {field} ({why}); nothing was written; "
                               "ask the master's operator to check it, then enroll again")

    if not _NODE_ID.fullmatch(reply.node_id):
        raise refuse("node_id", f"{reply.node_id[:60]!r}: expected 1-128 letters, digits, '.', '_', '-'")
    if not _CREDENTIAL.fullmatch(reply.node_credential):
        raise refuse("node_credential", "expected 16-4096 printable characters without spaces")
    if reply.heartbeat_interval_s > MAX_HEARTBEAT_S:
        raise refuse("heartbeat_interval_s", f"{reply.heartbeat_interval_s} s is more than {MAX_HEARTBEAT_S} s")
    vpn = reply.vpn
    return EnrollReply(
        node_id=reply.node_id,
        node_credential=reply.node_credential,
        vpn=VpnAssignment(
            address=vpn.address,
            server_public_key=vpn.server_public_key,
            endpoint=vpn.endpoint,
            allowed_ips=tuple(vpn.allowed_ips),
            dns=tuple(vpn.dns),
            persistent_keepalive_s=vpn.persistent_keepalive_s,
            master_address=vpn.master_address,
        ),
        heartbeat_interval_s=reply.heartbeat_interval_s,
    )


async def enroll(
    address: MasterAddress,
    token: str,
    ca_hash: str | None,
    facts: NodeFacts,
    public_key: str,
    max_message_bytes: int,
    usage_public_key: bytes = b"",
) -> tuple[EnrollReply, bytes | None]:
    """Returns the master's answer and the pinned CA (PEM; None on plain loopback).
    ``usage_public_key``: the raw Ed25519 public key the master verifies usage records with."""
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
            pb.EnrollRequest(token=token, facts=_facts_pb(facts), wireguard_public_key=public_key,
                             usage_public_key=usage_public_key),
            timeout=ENROLL_TIMEOUT_S,
        )
    except grpc.RpcError as exc:
        raise translate(exc, "enrollment", address.target, enrolling=True) from exc
    finally:
        await channel.close()
    return reply_from_pb(reply, address.target), ca_pem
