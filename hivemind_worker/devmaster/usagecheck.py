"""What the dev-master checks of a result's signed usage record, for UploadResult.

The first chunk of every upload call carries the record (a resumed call too). From a
node with a usage key on file it must verify against that key and name this node,
task and attempt and the archive the call announces: checked at the first chunk, so a
bad record costs no transfer. When the archive is whole, the record must name the
archive received (its sha256 and size), not only the one announced. A node with no
key on file (enrolled before records existed, no hello with a key yet) is taken
without a record. Any failure is a UsageRecordError whose text says why; the caller
refuses the upload with it.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from hivemind_worker import usage
from hivemind_worker.errors import UsageRecordError
from hivemind_worker.proto import worker_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    signed: usage.SignedRecord
    record: dict[str, Any]


def first_chunk(node: sqlite3.Row, task_id: str, attempt: int, chunk: pb.ResultChunk) -> Checked | None:
    """The record verified against the node's key and this call; None: no key on file."""
    key = node["usage_public_key"]
    if not key:
        logger.warning("result taken without a usage record: the node has no usage key on file (it sent "
                       "none at enrollment or hello), so no reward is computed",
                       extra={"node_id": node["node_id"], "task_id": task_id})
        return None
    if not chunk.HasField("usage"):
        raise UsageRecordError("the node has a usage key on file, so its result needs a signed usage record "
                               "on the first chunk of every upload call; none came")
    signed = usage.SignedRecord(chunk.usage.record, chunk.usage.signature)
    record = usage.verify(signed, key)
    usage.expect(record, node_id=node["node_id"], task_id=task_id, attempt=attempt,
                 result_sha256=chunk.sha256.lower(), result_bytes=chunk.total_bytes)
    return Checked(signed, record)


def completed(checked: Checked, sha256: str, size: int) -> tuple[bytes, bytes, float]:
    """(signed bytes, signature, reward) to store, once the record names the archive received."""
    try:
        usage.expect(checked.record, result_sha256=sha256, result_bytes=size)
    except UsageRecordError as exc:
        raise UsageRecordError(f"{exc}: the archive received is not the one the node signed for "
                               "(altered in transit?)") from exc
    return checked.signed.record, checked.signed.signature, usage.reward(checked.record)
