"""One authenticated call to the master, for `doctor`: does it answer (over TLS with
the pinned CA), does it accept this node's credential, and what time does it report.

Uses the session's channel, metadata and error classification; the answer is in the
package's own types, so the doctor knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Iterable

import grpc

from hivemind_worker.address import MasterAddress
from hivemind_worker.control.channel import SERVER_TIME_KEY, auth_metadata, open_channel
from hivemind_worker.control.errors import translate
from hivemind_worker.errors import CredentialRevoked, MasterUnreachable
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as rpc

PROBE_TASK_ID = "doctor-probe"  # a task no master assigns: any answer proves the call went through


@dataclass(frozen=True)
class ProbeResult:
    answered: bool  # the master answered the call (whatever it said)
    tls_failed: bool = False  # no answer because the TLS handshake failed (pinned CA mismatch)
    refused: bool = False  # the master refused the credential
    status: str = ""  # the gRPC status name, for the report
    detail: str = ""  # what went wrong, when it did not answer or refused
    skew_s: float | None = None  # master clock minus ours; None when it does not report its time


def _tls_failure(details: str) -> bool:
    text = details.lower()
    return any(k in text for k in ("handshake", "certificate", "ssl", "tls"))


def _server_time_ms(metadata: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    for key, value in metadata or ():
        if key == SERVER_TIME_KEY:
            return int(value)
    return None


async def probe_master(address: MasterAddress, ca_pem: bytes | None, credential: str,
                       max_message_bytes: int, timeout_s: float) -> ProbeResult:
    """Raises ConfigError when the address or CA cannot make a channel at all."""
    channel = open_channel(address, ca_pem, max_message_bytes)
    sent = time.time()
    try:
        call = rpc.NodeControlStub(channel).ResultOffset(
            pb.ResultOffsetRequest(task_id=PROBE_TASK_ID), metadata=auth_metadata(credential), timeout=timeout_s)
        refused = False
        try:
            await call
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            error = translate(exc, "doctor probe", address.target)
            refused = isinstance(error, CredentialRevoked) or code == grpc.StatusCode.PERMISSION_DENIED
            if isinstance(error, MasterUnreachable):
                return ProbeResult(False, tls_failed=address.tls and _tls_failure(details),
                                   status=code.name, detail=details[-120:])
        server_ms = _server_time_ms(await call.initial_metadata()) or _server_time_ms(await call.trailing_metadata())
    finally:
        await channel.close()
    received = time.time()
    skew = None if server_ms is None else server_ms / 1000 - (sent + received) / 2
    return ProbeResult(True, refused=refused, status=code.name, detail=details[-120:], skew_s=skew)
