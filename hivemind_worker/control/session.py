"""The long-lived Connect session: dial, hello, pump messages, reconnect with capped
exponential backoff and jitter, stop for good when the credential is refused.

The session decides nothing about tasks or telemetry; a SessionHandler (the agent)
says what goes into the hello and handles what the master sends, both in the
package's own types (control/messages.py translates). It also carries the bulk
transfers (bundle download, result upload) over the session's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import grpc

from hivemind_worker.control import messages, transfer
from hivemind_worker.control.channel import auth_metadata
from hivemind_worker.control.errors import translate
from hivemind_worker.control.messages import MasterCommand, NodeHello, Welcome
from hivemind_worker.errors import CredentialRevoked, MasterUnreachable
from hivemind_worker.fsutil import sha256_file
from hivemind_worker.proto import worker_pb2 as pb
from hivemind_worker.tasks.model import LogChunk, Resources, TaskEvent
from hivemind_worker.proto import worker_pb2_grpc as rpc
from hivemind_worker.usage import SignedRecord

logger = logging.getLogger(__name__)

# A session that lived this long resets the backoff: the master is healthy again.
STABLE_AFTER_S = 10.0
_CLOSE = object()


class SessionState(str, enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    REVOKED = "revoked"
    CLOSED = "closed"


class SessionHandler(Protocol):
    def hello(self) -> NodeHello: ...

    async def on_connected(self, welcome: Welcome) -> None: ...

    async def on_message(self, command: MasterCommand) -> None: ...

    async def on_disconnected(self) -> None: ...


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Equal jitter: half the capped exponential delay is fixed, half random, so a
    fleet that lost its master does not come back in one wave, yet no node waits
    longer than ``max_s``."""
    ceiling = min(max_s, initial_s * (2 ** attempt))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class ControlSession:
    def __init__(
        self,
        channel_factory: Callable[[], grpc.aio.Channel],
        node_id: str,
        credential: str,
        *,
        reconnect_initial_s: float,
        reconnect_max_s: float,
        target: str = "",
        rng: random.Random | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._channel_factory = channel_factory
        self._node_id = node_id
        self._credential = credential
        self._initial = reconnect_initial_s
        self._max = reconnect_max_s
        self._target = target
        self._rng = rng or random.Random()
        self._max_message_bytes = max_message_bytes
        # What this session may send: the node's own limit, or the master's if its
        # Welcome says it takes less (it would refuse a bigger message on every try).
        self._send_limit = max_message_bytes
        self._outbox: asyncio.Queue | None = None
        self.channel: grpc.aio.Channel | None = None
        self.state = SessionState.CONNECTING
        self.reconnects = 0
        self.session_id = ""
        self.log_chunks = False  # this session's master takes LogChunks (its Welcome said so)
        self.last_error = ""
        self.connected_since: float | None = None

    @property
    def connected(self) -> bool:
        return self.state is SessionState.CONNECTED

    def send(self, message: pb.WorkerMessage) -> bool:
        """Queue a message for the current stream; False when there is none (the
        caller's journal or spool keeps what must not be lost and resends it)."""
        if self._outbox is None or not self.connected:
            return False
        self._outbox.put_nowait(message)
        return True

    def send_event(self, event: TaskEvent) -> bool:
        return self.send(messages.event_message(event))

    def send_drain(self, draining: bool, reason: str) -> bool:
        return self.send(messages.drain_message(draining, reason))

    def send_report(self, sample: Mapping[str, Any], free: Resources | None = None) -> bool:
        return self.send(pb.WorkerMessage(telemetry=messages.report_from_sample(sample, free)))

    def send_logs(self, task_id: str, chunks: list[LogChunk]) -> tuple[int, int]:
        """Queue lines in batches under the message limit; returns (lines, bytes)
        queued, which stops short at the first batch the session could not take."""
        count = size = 0
        for message, lines_in, bytes_in in messages.log_messages(task_id, chunks, self._send_limit,
                                                                 self.log_chunks):
            if not self.send(message):
                break
            count += lines_in
            size += bytes_in
        return count, size

    def _live_channel(self) -> grpc.aio.Channel:
        if self.channel is None or not self.connected:
            raise MasterUnreachable("no session with the master right now; will retry after reconnect")
        return self.channel

    async def fetch_bundle(self, task_id: str, dest: Path, size: int, sha256: str) -> None:
        """Download a task's bundle over the current session (resuming, verified)."""
        await transfer.fetch_bundle(self._live_channel(), self._credential, task_id, dest, size, sha256)

    async def upload_result(self, task_id: str, attempt: int, archive: Path, usage: SignedRecord | None = None,
                            fresh: bool = False, sha256: str = "") -> None:
        """Upload a result from where the master left off; returns once it holds all.
        ``fresh``: built by this process and never offered (transfer.upload_result);
        ``sha256``: the archive's digest when the caller knows it ("": read it here)."""
        channel = self._live_channel()
        digest = sha256 or await asyncio.to_thread(sha256_file, archive)
        await transfer.upload_result(channel, self._credential, task_id, attempt, archive, digest, usage,
                                     max_message_bytes=self._send_limit, fresh=fresh)

    def update_settings(self, initial_s: float, max_s: float) -> None:
        self._initial, self._max = initial_s, max_s

    def close_stream(self) -> None:
        """Half-close the stream after what is queued: the master sees us leave."""
        if self._outbox is not None:
            self._outbox.put_nowait(_CLOSE)

    async def run(self, should_exit: asyncio.Event, handler: SessionHandler) -> None:
        """Keep a session up until ``should_exit`` is set, ``handler`` hearing what the
        master says (given here, not at construction: the handler is built on top of
        the session). Raises CredentialRevoked."""
        attempt = 0
        while not should_exit.is_set():
            self.state = SessionState.CONNECTING
            started = time.monotonic()
            try:
                await self._one_session(should_exit, handler)
            except CredentialRevoked as exc:
                self.state = SessionState.REVOKED
                self.last_error = str(exc)
                raise
            except Exception as exc:  # any failure of one session: log, back off, retry
                self.last_error = str(exc)
                logger.warning("session to the master ended: %s", exc)
            finally:
                await self._teardown(handler)
            if should_exit.is_set():
                break
            if time.monotonic() - started > STABLE_AFTER_S:
                attempt = 0
            delay = backoff_delay(attempt, self._initial, self._max, self._rng)
            attempt += 1
            self.reconnects += 1
            self.state = SessionState.BACKOFF
            logger.info("reconnecting to the master in %.1f s (attempt %d)", delay, attempt)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(should_exit.wait(), timeout=delay)
        self.state = SessionState.CLOSED

    async def _one_session(self, should_exit: asyncio.Event, handler: SessionHandler) -> None:
        self.channel = self._channel_factory()
        outbox: asyncio.Queue = asyncio.Queue()
        outbox.put_nowait(pb.WorkerMessage(hello=messages.hello_to_pb(handler.hello())))

        async def outgoing():
            while True:
                item = await outbox.get()
                if item is _CLOSE:
                    return
                yield item

        stub = rpc.NodeControlStub(self.channel)
        call = stub.Connect(outgoing(), metadata=auth_metadata(self._credential))
        try:
            first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("welcome"):
                raise _closed(self._target)
            self._outbox = outbox
            self.session_id = first.welcome.session_id
            self.log_chunks = first.welcome.log_chunks
            self._send_limit = min(self._max_message_bytes, first.welcome.max_message_bytes or self._max_message_bytes)
            self.state = SessionState.CONNECTED
            self.connected_since = time.time()
            self.last_error = ""
            logger.info("session %s open with the master at %s", self.session_id, self._target)
            await handler.on_connected(messages.welcome_from_pb(first.welcome))
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    if should_exit.is_set():
                        return
                    raise _closed(self._target)
                command = messages.from_master(message)
                if command is None:
                    logger.debug("ignoring a master message of a kind this node does not know")
                    continue
                await handler.on_message(command)
        except grpc.RpcError as exc:
            raise translate(exc, "session", self._target) from exc
        finally:
            call.cancel()

    async def _teardown(self, handler: SessionHandler) -> None:
        was_connected = self.connected
        self._outbox = None
        self.connected_since = None
        if self.state is not SessionState.REVOKED:
            self.state = SessionState.BACKOFF
        if was_connected:
            await handler.on_disconnected()
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


def _closed(target: str) -> MasterUnreachable:
    # A non-OK status raises from call.read(); EOF means the master ended us cleanly
    # (restart, replaced session), which is worth a reconnect, not an alarm.
    return MasterUnreachable(f"the master at {target} closed the session")
