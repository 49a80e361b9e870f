"""The dev-master's gRPC servicer: the master side of every NodeControl call.

Enroll and GetCA are open; every other call needs ``authorization: Bearer <credential>``
of an enrolled, unrevoked node (UNAUTHENTICATED otherwise). Errors become gRPC
status codes with a message a user can act on; this is the one place where the
project's errors turn into statuses on the master side.

Bulk data: bundles go out in chunks of at most 1 MiB (less when the message limit
is smaller); results come in at an offset that must equal what is already held
(FAILED_PRECONDITION names the size to resume from), are checked against their
sha256 when complete and then renamed to results/<task_id>.tar.gz. A result larger
than ``max_result_bytes``, or one that would leave less than ``DISK_RESERVE_BYTES``
free on the master's disk, is refused (RESOURCE_EXHAUSTED). A result of an attempt
that is no longer wanted (the task was lost there and runs again) is read, dropped
and answered complete, so that the node frees its spool.
A result whose usage record fails a check (usagecheck.py) is refused with
INVALID_ARGUMENT "usage record refused: <why>", its partial upload discarded; a
verified record is stored with the result and the reward computed from it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import shutil
import sqlite3
import time
from typing import NoReturn
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from hivemind_worker import usage
from hivemind_worker.control.channel import AUTH_HEADER, SERVER_TIME_KEY  # the protocol's metadata keys: one definition
from hivemind_worker.devmaster import registry, taskdb, usagecheck
from hivemind_worker.devmaster.hub import VpnHub
from hivemind_worker.devmaster.layout import StateDir
from hivemind_worker.devmaster.sessions import REVOKED_MESSAGE, SessionHub
from hivemind_worker.errors import EnrollmentError, UsageRecordError
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MIN_NODE_MESSAGE_BYTES = 64 * 1024  # the least a node may set (config.py): when its limit is unknown
DEFAULT_MAX_RESULT_BYTES = 2 * 1024 ** 3
DISK_RESERVE_BYTES = 256 * 1024 * 1024  # what a result upload always leaves free on the master's disk



async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("grpc's abort raises")  # never reached: says so to the type checker

@dataclass(frozen=True)
class VpnSettings:
    subnet: str = registry.DEFAULT_SUBNET
    keepalive_s: int = 25
    master_address: str = ""  # host:port of the master inside the tunnel; "" = not reachable there


def tunnel_master_address(listen_host: str, port: int, subnet: str) -> str:
    """Where nodes reach the master through the tunnel: the hub address, when the
    master listens there (or on every address); otherwise nowhere (empty)."""
    hub_ip = registry.hub_address(subnet).split("/")[0]
    if listen_host in ("0.0.0.0", "::", hub_ip):
        return f"[{hub_ip}]:{port}" if ":" in hub_ip else f"{hub_ip}:{port}"
    return ""


def _valid_wg_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DRAIN_LIMIT_S = 10.0


async def _drain(request_iterator) -> None:
    """Discard what a client still sends, within bounds (then answer anyway)."""
    received = 0

    async def consume() -> None:
        nonlocal received
        async for chunk in request_iterator:
            received += chunk.ByteSize()
            if received > DRAIN_LIMIT_BYTES:
                return

    try:
        await asyncio.wait_for(consume(), DRAIN_LIMIT_S)
    except (asyncio.TimeoutError, grpc.RpcError):
        pass


def _sha256_of(path: os.PathLike, size: int) -> "hashlib._Hash":
    """A running sha256 of the first ``size`` bytes already held (a resumed upload)."""
    digest = hashlib.sha256()
    if size:
        with open(path, "rb") as fh:
            while block := fh.read(min(1 << 20, size)):
                digest.update(block)
                size -= len(block)
    return digest


class ControlService(pb_grpc.NodeControlServicer):
    def __init__(self, state: StateDir, conn: sqlite3.Connection, sessions: SessionHub, *,
                 heartbeat_s: int = 30, vpn: VpnSettings = VpnSettings(), hub: VpnHub | None = None,
                 max_message_bytes: int = 4 * 1024 * 1024, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> None:
        self.state, self.conn, self.sessions = state, conn, sessions
        self.max_result_bytes = max_result_bytes
        self.heartbeat_s, self.vpn, self.hub = heartbeat_s, vpn, hub
        # Room for the chunk's other fields and framing.
        self.chunk_bytes = max(16 * 1024, min(CHUNK_BYTES, max_message_bytes - 16 * 1024))

    # ------------------------------------------------------------ open calls

    async def GetCA(self, request: pb.GetCARequest, context) -> pb.GetCAResponse:
        return pb.GetCAResponse(ca_pem=self.state.ca_cert.read_bytes())

    async def Enroll(self, request: pb.EnrollRequest, context) -> pb.EnrollResponse:
        key = request.wireguard_public_key
        if key and not _valid_wg_key(key):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                "wireguard_public_key is not a base64 WireGuard key (32 bytes)")
        if self.hub is not None and not key:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                "this master runs a WireGuard hub; send the node's WireGuard public key")
        facts = json_format.MessageToDict(request.facts, preserving_proto_field_name=True)
        hostname = request.facts.hostname or "unknown"
        if request.usage_public_key:  # before the token is spent: a refused node may try again with it
            try:
                usage.check_public_key(request.usage_public_key)
            except UsageRecordError as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"enrollment refused: {exc}")
        try:
            node = registry.enroll(self.conn, request.token, hostname, facts, key, self.vpn.subnet,
                                   usage_key=request.usage_public_key)
        except EnrollmentError as exc:
            logger.info("enrollment of %s refused: %s", hostname, exc)
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        vpn = pb.VpnAssignment(
            address=node.vpn_address,
            allowed_ips=[self.vpn.subnet],
            persistent_keepalive_s=self.vpn.keepalive_s,
        )
        if self.hub is not None:
            try:
                await asyncio.to_thread(self.hub.add_peer, key, node.vpn_address)
            except Exception as exc:  # the hub's own error (VpnError, OSError) tells the operator why
                logger.error("WireGuard hub refused %s: %s", node.node_id, exc, extra={"node_id": node.node_id})
                registry.revoke(self.conn, node.node_id)
                await _abort(context, grpc.StatusCode.UNAVAILABLE,
                                    "the master's WireGuard hub could not add this node; ask its operator to check "
                                    "the dev-master log, then enroll again with a new token")
            vpn.server_public_key = self.hub.public_key
            vpn.endpoint = self.hub.endpoint
            vpn.master_address = self.vpn.master_address
        logger.info("enrolled %s as %s (%s)", hostname, node.node_id, node.vpn_address, extra={"node_id": node.node_id})
        return pb.EnrollResponse(
            node_id=node.node_id, node_credential=node.credential, vpn=vpn,
            heartbeat_interval_s=self.heartbeat_s, server_time_ms=int(time.time() * 1000),
        )

    # ------------------------------------------------------------ authenticated calls

    def _lookup(self, context) -> sqlite3.Row | None:
        credential = ""
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_HEADER and isinstance(value, str) and value.startswith("Bearer "):
                credential = value[len("Bearer "):].strip()
        return registry.node_for_credential(self.conn, credential)

    async def _node(self, context) -> sqlite3.Row:
        node = self._lookup(context)
        if node is None:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, REVOKED_MESSAGE)
        return node

    async def _own_task(self, context, node: sqlite3.Row, task_id: str) -> sqlite3.Row:
        row = taskdb.get_task(self.conn, task_id)
        if row is None or row["node_id"] != node["node_id"]:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"task {task_id!r} is not assigned to node {node['node_id']}")
        return row

    async def Connect(self, request_iterator, context) -> None:
        node = self._lookup(context)
        if node is None:
            # Take the hello first: a status sent before the client's first write
            # completes reaches a grpc.aio client as INTERNAL instead of UNAUTHENTICATED,
            # and a refused node must see the real reason to stop retrying.
            try:
                await asyncio.wait_for(request_iterator.__aiter__().__anext__(), 5.0)
            except (StopAsyncIteration, asyncio.TimeoutError):
                pass
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, REVOKED_MESSAGE)
        await self.sessions.connect(node["node_id"], request_iterator, context)

    async def FetchBundle(self, request: pb.FetchBundleRequest, context):
        node = await self._node(context)
        row = await self._own_task(context, node, request.task_id)
        path = self.state.bundle(request.task_id)
        if not row["bundle_size"] or not path.exists():
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"task {request.task_id} has no bundle")
        total, digest = row["bundle_size"], row["bundle_sha256"]
        if request.offset > total:
            await _abort(context, grpc.StatusCode.OUT_OF_RANGE,
                                f"offset {request.offset} is past the bundle's end ({total} bytes)")
        # Chunks the node can receive: it said its limit in hello (gRPC refuses a larger
        # message outright, and the fetch would fail the same way on every try).
        session = self.sessions.sessions.get(node["node_id"])
        limit = session.max_message_bytes if session is not None else MIN_NODE_MESSAGE_BYTES
        chunk_bytes = max(16 * 1024, min(self.chunk_bytes, limit - 16 * 1024))
        with open(path, "rb") as fh:
            fh.seek(request.offset)
            offset = request.offset
            while offset < total:
                data = fh.read(chunk_bytes)
                if not data:
                    break
                yield pb.BundleChunk(offset=offset, data=data, total_bytes=total, sha256=digest)
                offset += len(data)

    def _held(self, task_id: str) -> tuple[int, bool]:
        final = self.state.result(task_id)
        if final.exists():
            return final.stat().st_size, True
        part = self.state.result_part(task_id)
        return (part.stat().st_size if part.exists() else 0), False

    async def ResultOffset(self, request: pb.ResultOffsetRequest, context) -> pb.ResultOffsetResponse:
        # The cheapest authenticated call also tells the caller our clock, so
        # `hivemind-worker doctor` can measure the node's skew.
        await context.send_initial_metadata(((SERVER_TIME_KEY, str(int(time.time() * 1000))),))
        node = await self._node(context)
        role = self.sessions.attempts.result_role(node["node_id"], request.task_id, request.attempt)
        if role is None:
            await self._own_task(context, node, request.task_id)  # NOT_FOUND, with the reason
        if role == "stale":
            self.sessions.attempts.drop_stale_result(node["node_id"], request.task_id, request.attempt)
            return pb.ResultOffsetResponse(offset=0, complete=True)
        offset, complete = self._held(request.task_id)
        return pb.ResultOffsetResponse(offset=offset, complete=complete)

    async def UploadResult(self, request_iterator, context) -> pb.UploadResultResponse:
        try:
            return await self._upload(request_iterator, context)
        except _Refusal as refusal:
            # Read what the node is still sending before answering: a status that
            # overtakes a grpc.aio client's pending write reaches it as INTERNAL,
            # and the node must see the real reason (e.g. the offset to resume from).
            await _drain(request_iterator)
            await _abort(context, refusal.code, refusal.message)

    async def _upload(self, request_iterator, context) -> pb.UploadResultResponse:
        node = self._lookup(context)
        if node is None:
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, REVOKED_MESSAGE)
        node_id = node["node_id"]
        task_id, fh, size, complete, attempt = None, None, 0, False, 0
        checked: usagecheck.Checked | None = None
        try:
            async for chunk in request_iterator:
                if task_id is None:
                    task_id, attempt = chunk.task_id, chunk.attempt
                    role = self.sessions.attempts.result_role(node_id, task_id, attempt)
                    if role is None:
                        raise _Refusal(grpc.StatusCode.NOT_FOUND, f"task {task_id!r} is not assigned to node {node_id}")
                    if role == "stale":
                        return await self._drop_stale(node_id, task_id, attempt, chunk, request_iterator)
                    attempt = taskdb.known_task(self.conn, task_id)["attempt"]
                    self._check_room(task_id, chunk.total_bytes)
                    size, complete = self._held(task_id)
                    if not complete:
                        try:
                            checked = usagecheck.first_chunk(node, task_id, attempt, chunk)
                        except UsageRecordError as exc:
                            self._refuse_usage(node_id, task_id, exc)
                        part = self.state.result_part(task_id)
                        fh = open(part, "ab")
                        # Hashed as it arrives; what an earlier call left is read once, here
                        # (in a thread: it may be large; a fresh upload has nothing to read).
                        digest = await asyncio.to_thread(_sha256_of, part, size) if size else hashlib.sha256()
                elif chunk.task_id != task_id:
                    raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "one UploadResult call carries one task's result")
                if complete:
                    continue  # idempotent: already whole, nothing is rewritten
                if chunk.offset != size:
                    raise _Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"result of {task_id}: chunk offset {chunk.offset} but the master holds {size} bytes; "
                        f"resume from offset {size}",
                    )
                if size + len(chunk.data) > min(chunk.total_bytes, self.max_result_bytes):
                    raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"result of {task_id}: more bytes than total_bytes={chunk.total_bytes}")
                assert fh is not None, "opened with the first chunk of an incomplete result"
                fh.write(chunk.data)
                digest.update(chunk.data)
                size += len(chunk.data)
                if size == chunk.total_bytes:
                    fh.flush()
                    await asyncio.to_thread(os.fsync, fh.fileno())  # once, before the node may let go of it
                    fh.close()
                    complete = await self._finish(node_id, task_id, attempt, size, chunk.sha256, checked,
                                                  digest.hexdigest())
        finally:
            if fh is not None and not fh.closed:
                fh.close()
        if task_id is None:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "UploadResult carried no chunk")
        return pb.UploadResultResponse(offset=size, complete=complete)

    def _check_room(self, task_id: str, total: int) -> None:
        """A node must not be able to fill the master's disk."""
        if total > self.max_result_bytes:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"result of {task_id} is {total} bytes, more than this master accepts "
                           f"({self.max_result_bytes} bytes, `dev-master serve --max-result-bytes`); "
                           "write less to the task's output or raise the limit")
        held, _ = self._held(task_id)
        free = shutil.disk_usage(self.state.results).free
        if free - max(0, total - held) < DISK_RESERVE_BYTES:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"result of {task_id} ({total} bytes) does not fit on the master's disk "
                           f"({free} bytes free, {DISK_RESERVE_BYTES} kept in reserve); try again once the "
                           "master's operator has freed space")

    async def _drop_stale(self, node_id: str, task_id: str, attempt: int, first: pb.ResultChunk,
                          request_iterator) -> pb.UploadResultResponse:
        """Read and drop an old attempt's result (within bounds), then answer complete."""
        received = len(first.data)
        async for chunk in request_iterator:
            received += len(chunk.data)
            if received > self.max_result_bytes:
                raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"result of {task_id}: more than {self.max_result_bytes} bytes")
        self.sessions.attempts.drop_stale_result(node_id, task_id, attempt)
        return pb.UploadResultResponse(offset=first.total_bytes, complete=True)

    def _refuse_usage(self, node_id: str, task_id: str, reason: UsageRecordError) -> NoReturn:
        """Nothing of this result is kept: the node uploads it again from offset 0."""
        self.state.result_part(task_id).unlink(missing_ok=True)
        taskdb.set_result(self.conn, task_id, 0, "", False)
        logger.warning("result refused, usage record: %s", reason, extra={"node_id": node_id, "task_id": task_id})
        raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"usage record refused: {reason}; "
                       "the partial upload was discarded, upload again from offset 0")

    async def _finish(self, node_id: str, task_id: str, attempt: int, size: int, expected: str,
                      checked: usagecheck.Checked | None, actual: str) -> bool:
        part = self.state.result_part(task_id)
        stored = None
        if checked is not None:  # first: the signed record, not the unsigned announcement, names the archive
            try:
                stored = usagecheck.completed(checked, actual, size)
            except UsageRecordError as exc:
                self._refuse_usage(node_id, task_id, exc)
        if actual != expected.lower():
            part.unlink(missing_ok=True)
            taskdb.set_result(self.conn, task_id, 0, "", False)
            raise _Refusal(
                grpc.StatusCode.DATA_LOSS,
                f"result of {task_id}: sha256 {actual} does not match the announced {expected}; "
                "the partial upload was discarded, upload again from offset 0",
            )
        os.replace(part, self.state.result(task_id))
        taskdb.set_result(self.conn, task_id, size, actual, True, stored)
        logger.info("result stored (%d bytes, reward %s)", size, stored[2] if stored else None,
                    extra={"node_id": node_id, "task_id": task_id})
        self.sessions.result_stored(node_id, task_id, attempt)
        return True
