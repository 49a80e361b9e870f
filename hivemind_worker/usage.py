"""A task's usage record: what it used, signed by the node, verified by the master.

The record is a flat JSON object (``FIELDS``), serialized once, canonically (sorted
keys, no spaces, UTF-8), and signed with the node's Ed25519 key over
``DOMAIN + record``. The signed bytes travel as they are (``SignedUsage.record``):
the verifier checks the signature over exactly what it received and only then
parses it, so no re-serialization can change what was signed.

Shared by the node (``sign``) and any master (``verify``, ``reward``); it knows
nothing of protobuf, tasks or the engine. Measured values that the hardware did not
report are left out of the record (``None`` here), never guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hivemind_worker.errors import UsageRecordError

VERSION = 1
DOMAIN = b"hivemind.usage.v1\n"
MAX_RECORD_BYTES = 64 * 1024

# name -> type of every field; GPU entries are {"index", "uuid", "gpu_seconds", "energy_j"?}.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "node_id": str,
    "task_id": str,
    "attempt": int,
    "image_digest": str,          # "sha256:..." of the image that ran; "" if the engine did not say
    "bundle_sha256": str,         # hex; "" when the task had no bundle
    "result_sha256": str,         # hex of the result archive this record travels with
    "result_bytes": int,
    "state": str,                 # the outcome: exited, failed, timed_out, oom_killed, cancelled, lost
    "exit_code": (int, type(None)),
    "reason": str,
    "started_ms": int,
    "ended_ms": int,
    "cpu_seconds": (int, float),
    "memory_peak_bytes": int,
    "memory_avg_bytes": int,
    "cpu_limit_millicores": int,  # what the task was given, for the reward's percentages
    "memory_limit_bytes": int,
    "gpus": list,
}
OPTIONAL = {"cpu_energy_j": (int, float)}  # RAPL package energy over the run (whole host), where readable


@dataclass(frozen=True)
class SignedRecord:
    record: bytes
    signature: bytes


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def sign(record: dict[str, Any], key: Ed25519PrivateKey) -> SignedRecord:
    body = canonical(record)
    return SignedRecord(body, key.sign(DOMAIN + body))


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify(signed: SignedRecord, public_key: bytes) -> dict[str, Any]:
    """The record, once its signature and shape check out; else UsageRecordError with why."""
    if len(signed.record) > MAX_RECORD_BYTES:
        raise UsageRecordError(f"usage record is {len(signed.record)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signed.signature, DOMAIN + signed.record)
    except ValueError as exc:
        raise UsageRecordError(f"the node's usage key is not an Ed25519 public key ({exc})") from exc
    except InvalidSignature as exc:
        raise UsageRecordError("usage record signature does not verify with the node's enrolled key "
                               "(altered in transit, or signed by another key)") from exc
    try:
        record = json.loads(signed.record)
    except ValueError as exc:
        raise UsageRecordError(f"usage record is not JSON ({exc})") from exc
    _check_shape(record)
    return record


def _check_shape(record: Any) -> None:
    if not isinstance(record, dict):
        raise UsageRecordError("usage record is not a JSON object")
    for name, kind in FIELDS.items():
        value = record.get(name, ...)
        if value is ... or isinstance(value, bool) or not isinstance(value, kind):
            raise UsageRecordError(f"usage record field {name!r} is missing or not {kind}")
    for name, kind in OPTIONAL.items():
        if name in record and not isinstance(record[name], kind):
            raise UsageRecordError(f"usage record field {name!r} is not {kind}")
    unknown = set(record) - set(FIELDS) - set(OPTIONAL)
    if unknown:
        raise UsageRecordError(f"usage record has unknown fields {sorted(unknown)}")
    if record["version"] != VERSION:
        raise UsageRecordError(f"usage record version {record['version']} is not {VERSION}")
    numbers = [record["cpu_seconds"], record["memory_peak_bytes"], record["memory_avg_bytes"],
               record["cpu_limit_millicores"], record["memory_limit_bytes"], *[record.get(n, 0) for n in OPTIONAL]]
    if any(not math.isfinite(v) or v < 0 for v in numbers) or record["ended_ms"] < record["started_ms"]:
        raise UsageRecordError("usage record has a negative or non-finite figure, or ends before it starts")
    for gpu in record["gpus"]:
        if not (isinstance(gpu, dict) and isinstance(gpu.get("index"), int) and isinstance(gpu.get("uuid"), str)
                and isinstance(gpu.get("gpu_seconds"), (int, float)) and gpu["gpu_seconds"] >= 0
                and isinstance(gpu.get("energy_j", 0), (int, float)) and set(gpu) <= {"index", "uuid", "gpu_seconds", "energy_j"}):
            raise UsageRecordError(f"usage record gpu entry {gpu!r} is not {{index, uuid, gpu_seconds[, energy_j]}}")
