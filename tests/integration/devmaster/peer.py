"""Test helpers: a dev-master running in a thread of the test process, and a
minimal scripted node speaking the protocol through the generated stubs.

The master runs its own event loop in a thread (exactly as `serve` runs it) so the
test's loop can drive grpc.aio clients and CLI subprocesses at the same time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from pathlib import Path

import grpc

from hivemind_worker.devmaster.server import DevMaster, MasterConfig
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.proto import worker_pb2_grpc as pb_grpc


class MasterThread:
    def __init__(self, state_dir: Path, hub=None, **config) -> None:
        self.config = MasterConfig(state_dir=state_dir, listen="127.0.0.1:0", **config)
        self.hub = hub
        self.master: DevMaster | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dev-master", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self.master = DevMaster(self.config, self.hub)
            await self.master.serve(lambda m: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self) -> "MasterThread":
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self.master is not None:
            self._loop.call_soon_threadsafe(self.master.request_exit)
        self._thread.join(15)

    @property
    def address(self) -> str:
        return self.master.address

    @property
    def state(self):
        return self.master.state

    def ca_pem(self) -> bytes:
        return self.state.ca_cert.read_bytes()

    async def full_pass(self, timeout: float = 10.0) -> None:
        """Wait until the master has gone once round its main loop after now (it has
        seen every commit made before this call) - instead of sleeping a fixed time."""
        start = self.master.ticks
        await wait_for(lambda: self.master.ticks >= start + 2, timeout, "a pass of the master's main loop")


async def wait_for(predicate, timeout: float = 10.0, what: str = "the condition"):
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def wg_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def channel(master: MasterThread, max_message_bytes: int = 16 * 1024 * 1024) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=master.ca_pem())
    return grpc.aio.secure_channel(master.address, creds, options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ])


class FakeNode:
    """One scripted node: enroll, open a session, read what the master sends."""

    def __init__(self, master: MasterThread, hostname: str = "fake-node", usage_key: bytes = b"") -> None:
        self.master = master
        self.usage_key = usage_key  # raw Ed25519 public key sent at enrollment (b"": none, an older node)
        self.hostname = hostname
        self.channel = channel(master)
        self.stub = pb_grpc.NodeControlStub(self.channel)
        self.node_id = ""
        self.credential = ""
        self.call = None
        self.welcome: pb.Welcome | None = None

    @property
    def meta(self):
        return (("authorization", f"Bearer {self.credential}"),)

    async def enroll(self, token: str) -> pb.EnrollResponse:
        reply = await self.stub.Enroll(pb.EnrollRequest(
            token=token, wireguard_public_key=wg_key(), usage_public_key=self.usage_key,
            facts=pb.NodeFacts(hostname=self.hostname, cpu_cores=4, memory_bytes=8 << 30, agent_version="test"),
        ))
        self.node_id, self.credential = reply.node_id, reply.node_credential
        return reply

    async def connect(self, cpus: int = 4000, memory: int = 8 << 30, gpus: int = 0,
                      held: tuple[pb.HeldTask, ...] = (), draining: bool = False, task_slots: int = 0,
                      drain_reason: str = "", usage_key: bytes = b"") -> pb.Welcome:
        # A request iterator, as the real client uses: the master's status then
        # arrives on read() even when it ends the call before reading anything.
        self.outbox: asyncio.Queue = asyncio.Queue()
        outbox = self.outbox

        async def outgoing():
            while True:
                message = await outbox.get()
                if message is None:
                    return
                yield message

        capacity = pb.Resources(cpu_millicores=cpus, memory_bytes=memory, gpu_count=gpus)
        outbox.put_nowait(pb.WorkerMessage(hello=pb.Hello(
            node_id=self.node_id, agent_version="test", capacity=capacity, free=capacity,
            tasks=list(held), draining=draining, task_slots=task_slots, drain_reason=drain_reason,
            usage_public_key=usage_key)))
        self.call = self.stub.Connect(outgoing(), metadata=self.meta)
        first = await asyncio.wait_for(self.call.read(), 10)
        assert first.WhichOneof("kind") == "welcome", first
        self.welcome = first.welcome
        return first.welcome

    async def send(self, **kind) -> None:
        self.outbox.put_nowait(pb.WorkerMessage(**kind))

    def done_writing(self) -> None:
        self.outbox.put_nowait(None)

    async def recv(self, timeout: float = 10.0) -> pb.MasterMessage:
        message = await asyncio.wait_for(self.call.read(), timeout)
        assert message is not grpc.aio.EOF, "the master closed the stream"
        return message

    async def recv_kind(self, kind: str, timeout: float = 10.0):
        """The next message of ``kind`` (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.recv(max(0.1, deadline - loop.time()))
            if message.WhichOneof("kind") == kind:
                return getattr(message, kind)

    async def event_acked(self, task_id: str, state: int, seq: int, timeout: float = 10.0, **fields) -> pb.EventAck:
        """Send a sequenced event and return the master's next EventAck for the task."""
        await self.event(task_id, state, seq=seq, **fields)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ack = await self.recv_kind("event_ack", max(0.1, deadline - loop.time()))
            if ack.task_id == task_id:
                return ack

    async def event(self, task_id: str, state: int, **fields) -> None:
        await self.send(task_event=pb.TaskEvent(task_id=task_id, state=state, **fields))

    async def logs(self, task_id: str, lines: list[tuple[int, int, str]]) -> None:
        await self.send(logs=pb.LogBatch(task_id=task_id, lines=[
            pb.LogLine(seq=seq, stream=stream, text=text) for seq, stream, text in lines]))

    async def chunks(self, task_id: str, chunks: list[tuple[int, int, bytes]]) -> None:
        """(first_seq, stream, text) LogChunks, as a node that was welcomed with log_chunks sends them."""
        await self.send(logs=pb.LogBatch(task_id=task_id, chunks=[
            pb.LogChunk(first_seq=first, stream=stream, time_ms=1, text=text) for first, stream, text in chunks]))

    async def upload(self, task_id: str, data: bytes, sha256: str, offset: int = 0, end: int | None = None,
                     chunk: int = 64 * 1024, attempt: int = 0, total: int | None = None,
                     usage: pb.SignedUsage | None = None) -> pb.UploadResultResponse:
        """``usage``: the signed record, sent on the first chunk of the call (as a node does)."""
        end = len(data) if end is None else end

        async def chunks():
            for start in range(offset, max(end, offset + 1), chunk):
                yield pb.ResultChunk(task_id=task_id, offset=start, data=data[start:min(end, start + chunk)],
                                     total_bytes=len(data) if total is None else total, sha256=sha256,
                                     attempt=attempt, usage=usage if start == offset else None)

        return await self.stub.UploadResult(chunks(), metadata=self.meta)

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()
