"""Bulk data over gRPC: bundle download and resumable result upload, in chunks.

Large data never travels as one message; both directions are verified by SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import AsyncIterator

import grpc

from hivemind_worker.control.channel import auth_metadata
from hivemind_worker.control.errors import translate
from hivemind_worker.errors import ControlError, ProtocolError, UsageRecordError
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as rpc
from hivemind_worker.usage import SignedRecord

logger = logging.getLogger(__name__)
# Measured on loopback grpc.aio (client + server CPU per 256 MiB): 128-512 KiB
# ~0.6-0.9 s, 1-4 MiB 1.2-1.6 s (larger messages cost grpc more copies), so
# bigger chunks are slower, not faster. Must stay below max_message_bytes.
CHUNK_BYTES = 512 * 1024
USAGE_REFUSED = "usage record refused"  # how the master's INVALID_ARGUMENT details start


async def fetch_bundle(channel: grpc.aio.Channel, credential: str, task_id: str, dest: Path, size: int, sha256: str) -> None:
    """Download a task's bundle into ``dest``, resuming a partial file, and verify it."""
    stub = rpc.NodeControlStub(channel)
    digest = hashlib.sha256()
    offset = dest.stat().st_size if dest.exists() else 0
    if 0 < offset < size:  # resume a partial download
        with dest.open("rb") as held:
            for block in iter(lambda: held.read(1 << 20), b""):
                digest.update(block)
    else:
        offset = 0
    mode = "ab" if offset else "wb"
    try:
        with dest.open(mode) as out:
            call = stub.FetchBundle(pb.FetchBundleRequest(task_id=task_id, offset=offset), metadata=auth_metadata(credential))
            async for chunk in call:
                if chunk.offset != offset:
                    raise ProtocolError(f"bundle of {task_id}: chunk at {chunk.offset}, expected {offset}")
                out.write(chunk.data)
                digest.update(chunk.data)
                offset += len(chunk.data)
                if offset > size:
                    raise ProtocolError(f"bundle of {task_id} is larger than announced ({size} bytes)")
    except grpc.RpcError as exc:
        raise translate(exc, f"downloading the bundle of {task_id}") from exc
    if offset != size or digest.hexdigest() != sha256.lower():
        dest.unlink(missing_ok=True)
        raise ProtocolError(f"bundle of {task_id} failed its check ({offset}/{size} bytes, sha256 mismatch or short)")


async def _chunks(task_id: str, attempt: int, path: Path, offset: int, total: int, sha256: str,
                  usage: SignedRecord | None, chunk_bytes: int) -> AsyncIterator[pb.ResultChunk]:
    # The record rides on the first chunk of every call, so a resumed upload carries it too.
    first = pb.SignedUsage(record=usage.record, signature=usage.signature) if usage is not None else None
    with path.open("rb") as fh:
        fh.seek(offset)
        while True:
            data = fh.read(chunk_bytes)
            if not data and offset < total:
                raise ProtocolError(f"result of {task_id} shrank while uploading")
            yield pb.ResultChunk(task_id=task_id, offset=offset, data=data, total_bytes=total, sha256=sha256,
                                 attempt=attempt, usage=first)
            first = None
            offset += len(data)
            if offset >= total:
                return


async def upload_result(
    channel: grpc.aio.Channel, credential: str, task_id: str, attempt: int, archive: Path, sha256: str,
    usage: SignedRecord | None = None, max_message_bytes: int = 0, fresh: bool = False,
) -> None:
    """Upload from the offset the master already holds; returns once it holds all.
    Every call names the attempt, so an old attempt's bytes are never taken for it.
    ``usage``: the task's signed usage record (None only where the node has no key).
    UsageRecordError when the master refused the record (it then dropped the partial
    result: the next call starts from 0). ``max_message_bytes``: the channel's send
    limit (0: none set); a chunk stays under it, or gRPC refuses every try.

    ``fresh``: this process built the archive and never offered it, so the master
    cannot hold a byte of it: the upload starts at 0 without asking (a ResultOffset
    call less per task, ~0.5 ms of CPU on each side). A master that does hold bytes
    refuses a chunk at another offset than its own (FAILED_PRECONDITION, "resume from
    offset N"): the upload then asks, as every later try does."""
    stub = rpc.NodeControlStub(channel)
    meta = auth_metadata(credential)
    total = archive.stat().st_size
    chunk_bytes = min(CHUNK_BYTES, max_message_bytes - 16 * 1024) if max_message_bytes else CHUNK_BYTES
    try:
        reply = None
        if fresh:
            try:
                reply = await stub.UploadResult(_chunks(task_id, attempt, archive, 0, total, sha256, usage, chunk_bytes),
                                                metadata=meta)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                logger.info("the master holds part of the result already (%s); asking where to resume",
                            exc.details(), extra={"task_id": task_id})
        if reply is None:
            held = await stub.ResultOffset(pb.ResultOffsetRequest(task_id=task_id, attempt=attempt), metadata=meta)
            if held.complete:
                return
            offset = held.offset if held.offset <= total else 0
            if offset:
                logger.info("resuming result upload at %d of %d bytes", offset, total, extra={"task_id": task_id})
            reply = await stub.UploadResult(_chunks(task_id, attempt, archive, offset, total, sha256, usage, chunk_bytes),
                                            metadata=meta)
    except grpc.RpcError as exc:
        details = exc.details() if hasattr(exc, "details") else ""
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and (details or "").startswith(USAGE_REFUSED):
            raise UsageRecordError(f"result of {task_id}: {details} (the master dropped what it held; "
                                   "the upload starts over on the next session)") from exc
        raise translate(exc, f"uploading the result of {task_id}") from exc
    if not reply.complete:
        raise ControlError(f"result of {task_id}: master holds {reply.offset}/{total} bytes and did not accept it")
