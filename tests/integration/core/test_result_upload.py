"""The node's result upload (control/transfer.py) against a real dev-master over
loopback TLS: a fresh archive goes without asking where to resume, and still ends
whole when the master does hold part of it; every other try asks first."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import grpc
import pytest

from hivemind_worker.control import transfer
from hivemind_worker.devmaster import submit as submit_core
from tests.integration.devmaster.conftest import db, make_node, master, token  # noqa: F401 (fixtures)
from tests.support.wait import until

MiB = 1024 * 1024


class MethodLog:
    """Which RPCs the node made, in order, seen under the stub. grpc.aio files an
    interceptor under its first kind only: one recorder per kind, one list."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        log = self.methods

        def seen(details) -> None:
            method = details.method.decode() if isinstance(details.method, bytes) else details.method
            log.append(method.rsplit("/", 1)[-1])

        class Unary(grpc.aio.UnaryUnaryClientInterceptor):
            async def intercept_unary_unary(self, continuation, details, request):
                seen(details)
                return await continuation(details, request)

        class Upload(grpc.aio.StreamUnaryClientInterceptor):
            async def intercept_stream_unary(self, continuation, details, request_iterator):
                seen(details)
                return await continuation(details, request_iterator)

        self.interceptors = [Unary(), Upload()]


@pytest.fixture
async def upload(master, make_node):  # noqa: F811 (a fixture of this module's imports)
    """(node, task_id, attempt, calls, send): a node that was assigned a task, and
    ``send(archive, fresh)`` uploading through transfer.upload_result on a channel
    whose RPCs are logged in ``calls.methods``."""
    node = await make_node()
    task_id = submit_core.submit(master.state, submit_core.SubmitRequest(
        bundle=b"", spec={"cpu_millicores": 1000, "memory_bytes": 256 * MiB}))
    spec = await node.recv_kind("assign")
    assert spec.task_id == task_id
    calls = MethodLog()
    creds = grpc.ssl_channel_credentials(root_certificates=master.ca_pem())
    channel = grpc.aio.secure_channel(master.address, creds, interceptors=calls.interceptors)

    async def send(archive, fresh: bool) -> None:
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        await transfer.upload_result(channel, node.credential, task_id, spec.attempt or 1, archive, digest,
                                     max_message_bytes=4 * MiB, fresh=fresh)

    yield node, task_id, spec.attempt or 1, calls, send
    await channel.close()


def archive_of(tmp_path, size: int):
    path = tmp_path / "result.tar.gz"
    path.write_bytes(os.urandom(size))
    return path


async def test_a_fresh_archive_goes_without_asking_where_to_resume(upload, master, tmp_path):  # noqa: F811
    node, task_id, _, calls, send = upload
    archive = archive_of(tmp_path, 1 * MiB + 4321)  # three chunks
    await send(archive, fresh=True)
    assert calls.methods == ["UploadResult"], "no ResultOffset call before a fresh archive"
    assert master.state.result(task_id).read_bytes() == archive.read_bytes()
    ack = await node.recv_kind("result_ack")
    assert ack.task_id == task_id


async def test_a_fresh_archive_the_master_holds_part_of_resumes_from_its_offset(upload, master, tmp_path, caplog):  # noqa: F811
    """Cannot happen to an archive this process built, unless the master is not the
    one the node thinks: the master's refusal (resume from offset N) is enough."""
    node, task_id, attempt, calls, send = upload
    archive = archive_of(tmp_path, 300_000)
    data = archive.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    reply = await node.upload(task_id, data, digest, end=100_000, attempt=attempt)
    assert (reply.offset, reply.complete) == (100_000, False)
    with caplog.at_level(logging.INFO, logger="hivemind_worker.control.transfer"):
        await send(archive, fresh=True)
    assert calls.methods == ["UploadResult", "ResultOffset", "UploadResult"]
    assert "resume from offset 100000" in caplog.text and "resuming result upload at 100000" in caplog.text
    assert master.state.result(task_id).read_bytes() == data
    assert (await node.recv_kind("result_ack")).task_id == task_id


async def test_a_cut_fresh_upload_is_resumed_by_the_next_try(upload, master, tmp_path, caplog):  # noqa: F811
    """The fresh try is cut once the master holds part of it (as SessionHost.end_transfers
    cuts an upload when the session drops); the next try is not fresh: it asks, and
    sends only the rest."""
    node, task_id, _, calls, send = upload
    archive = archive_of(tmp_path, 64 * MiB)  # incompressible and large: still going when cut
    part = master.state.result_part(task_id)
    first = asyncio.create_task(send(archive, fresh=True))
    await wait_part(part, 2 * transfer.CHUNK_BYTES)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await master.full_pass()  # the master has seen the call end
    held = part.stat().st_size
    assert 0 < held < archive.stat().st_size, "cut mid-upload"
    assert calls.methods == ["UploadResult"]
    calls.methods.clear()
    with caplog.at_level(logging.INFO, logger="hivemind_worker.control.transfer"):
        await send(archive, fresh=False)
    assert calls.methods == ["ResultOffset", "UploadResult"]
    assert "resuming result upload at" in caplog.text, "resumed from the master's offset, not from 0"
    assert master.state.result(task_id).read_bytes() == archive.read_bytes()
    assert (await node.recv_kind("result_ack")).task_id == task_id


async def wait_part(part, size: int) -> None:
    await until(lambda: part.exists() and part.stat().st_size >= size, 30, f"the master holding {size} bytes of the result")
