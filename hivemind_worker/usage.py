"""A task's usage record: what it used, signed by the node, verified by the master.

The record is a flat JSON object (``FIELDS``), serialized once, canonically (sorted
keys, no spaces, UTF-8), and signed with the node's Ed25519 key over
``DOMAIN + record``. The signed bytes travel as they are (``SignedUsage.record``):
the verifier checks the signature over exactly what it received and only then
parses it, so no re-serialization can change what was signed.

Shared by the node (``sign``) and any master (``verify``, ``expect``, ``reward``); it
knows nothing of protobuf, tasks or the engine. Measured values that the hardware did
not report are left out of the record (``None`` here), never guessed.

Reward (``reward``): the platform's report formula (``compute_reward``: base 10 times
a multiplier for the average of CPU and memory use, plus 0.01 per GPU percent, cut to
an int) applied to the task's own averages over its run, once per 30 s of run:
    run_s = (ended_ms - started_ms) / 1000
    cpu_usage = 100 * cpu_seconds / (run_s * cpu_limit_millicores / 1000), at most 100
    memory_usage = 100 * memory_avg_bytes / memory_limit_bytes, at most 100
    gpu_usage = 100 * sum(gpu_seconds) / (run_s * number of gpus), at most 100; 0 without GPUs
    reward = round(compute_reward(cpu_usage, memory_usage, gpu_usage) * run_s / 30, 2)
A limit of 0 (not stated) makes its percentage 0, as an unmeasured figure counts 0 in a
telemetry report; a run of 0 s earns 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hivemind_worker.errors import UsageRecordError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography is imported where a key is used: the reward formula below is also the
# idle node's telemetry path (telemetry/rewards.py), which signs and verifies nothing.

VERSION = 1
DOMAIN = b"hivemind.usage.v1\n"
MAX_RECORD_BYTES = 64 * 1024
PUBLIC_KEY_BYTES = 32
BASE_REWARD = 10
REPORT_S = 30  # one telemetry report (one compute_reward) per 30 s of run

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


def check_public_key(raw: bytes) -> None:
    """UsageRecordError unless ``raw`` is a raw Ed25519 public key (32 bytes)."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise UsageRecordError(f"usage public key is {len(raw)} bytes; send the raw {PUBLIC_KEY_BYTES}-byte "
                               "Ed25519 public key (usage.public_key_bytes), or none")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise UsageRecordError(f"usage public key is not an Ed25519 public key ({exc})") from exc


def verify(signed: SignedRecord, public_key: bytes) -> dict[str, Any]:
    """The record, once its signature and shape check out; else UsageRecordError with why."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
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


def expect(record: dict[str, Any], **wanted: Any) -> None:
    """UsageRecordError naming the first field of ``record`` that differs from ``wanted``
    (what the verifier knows of this upload: node_id, task_id, attempt, result_sha256...)."""
    for name, value in wanted.items():
        if record.get(name) != value:
            raise UsageRecordError(f"the record's {name} is {record.get(name)!r} but this upload's is {value!r}")


def multiplier(avg_usage: float) -> float:
    if avg_usage > 80:
        return 1.5
    if avg_usage > 50:
        return 1.2
    if avg_usage > 20:
        return 1.0
    return 0.8


def compute_reward(cpu_usage: float, memory_usage: float, gpu_usage: float = 0.0) -> int:
    """One report's reward (the platform's formula, thresholds strict ">")."""
    avg_usage = (cpu_usage + memory_usage) / 2
    gpu_bonus = gpu_usage * 0.01
    return int(BASE_REWARD * multiplier(avg_usage) + gpu_bonus)


def _percent(used: float, available: float) -> float:
    return min(100.0, 100 * used / available) if available > 0 else 0.0


def reward(record: dict[str, Any]) -> float:
    """The task's reward from its verified record (the formula in the module docstring)."""
    run_s = (record["ended_ms"] - record["started_ms"]) / 1000
    if run_s <= 0:
        return 0.0
    gpus = record["gpus"]
    cpu = _percent(record["cpu_seconds"], run_s * record["cpu_limit_millicores"] / 1000)
    memory = _percent(record["memory_avg_bytes"], record["memory_limit_bytes"])
    gpu = _percent(sum(g["gpu_seconds"] for g in gpus), run_s * len(gpus))
    return round(compute_reward(cpu, memory, gpu) * run_s / REPORT_S, 2)
