"""The usage record's checks (usage.verify's shape, check_public_key, expect), the
reward from a record against figures computed by hand, one formula shared with the
telemetry ledger, and the dev-master's schema migration for records (no network)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hivemind_worker import usage
from hivemind_worker.devmaster import db as dbmod
from hivemind_worker.devmaster import registry, taskdb
from hivemind_worker.devmaster.layout import StateDir
from hivemind_worker.errors import UsageRecordError
from hivemind_worker.telemetry import rewards

MiB = 1024 * 1024
KEY = Ed25519PrivateKey.generate()
PUBLIC = usage.public_key_bytes(KEY)


def record(**changes) -> dict:
    return {
        "version": 1, "node_id": "node-1", "task_id": "task-1", "attempt": 1, "image_digest": "sha256:" + "0" * 64,
        "bundle_sha256": "", "result_sha256": "ab" * 32, "result_bytes": 10, "state": "exited", "exit_code": 0,
        "reason": "", "started_ms": 1_000_000, "ended_ms": 1_060_000, "cpu_seconds": 30.0,
        "memory_peak_bytes": 200 * MiB, "memory_avg_bytes": 128 * MiB, "cpu_limit_millicores": 1000,
        "memory_limit_bytes": 256 * MiB, "gpus": [], **changes,
    }


def verify(rec) -> dict:
    body = rec if isinstance(rec, bytes) else json.dumps(rec).encode()
    return usage.verify(usage.SignedRecord(body, KEY.sign(usage.DOMAIN + body)), PUBLIC)


def test_a_good_record_round_trips():
    signed = usage.sign(record(cpu_energy_j=12.5, gpus=[{"index": 0, "uuid": "GPU-1", "gpu_seconds": 3}]), KEY)
    assert usage.verify(signed, PUBLIC)["cpu_energy_j"] == 12.5


@pytest.mark.parametrize("bad, why", [
    (b"[1, 2]", "not a JSON object"),
    (b"{not json", "not JSON"),
    (record(cpu_seconds=None), "'cpu_seconds' is missing or not"),
    ({k: v for k, v in record().items() if k != "task_id"}, "'task_id' is missing"),
    (record(attempt=True), "'attempt' is missing or not"),  # a bool is no int here
    (record(exit_code="0"), "'exit_code' is missing or not"),
    (record(extra=1), "unknown fields ['extra']"),
    (record(version=2), "version 2 is not 1"),
    (record(cpu_seconds=-1.0), "negative or non-finite"),
    (record(cpu_energy_j=-5), "negative or non-finite"),
    (record(ended_ms=999_999), "ends before it starts"),
    (record(cpu_energy_j="lots"), "'cpu_energy_j' is not"),
    (record(gpus=[{"index": 0, "uuid": "GPU-1"}]), "gpu entry"),
    (record(gpus=[{"index": 0, "uuid": "GPU-1", "gpu_seconds": -1}]), "gpu entry"),
    (record(gpus=[{"index": 0, "uuid": "GPU-1", "gpu_seconds": 1, "watts": 3}]), "gpu entry"),
    (record(reason="x" * usage.MAX_RECORD_BYTES), "more than"),
])
def test_a_signed_but_malformed_record_is_refused_with_why(bad, why):
    with pytest.raises(UsageRecordError) as err:
        verify(bad)
    assert why in str(err.value)


def test_a_nan_figure_cannot_even_be_signed():
    with pytest.raises(ValueError):
        usage.sign(record(cpu_seconds=float("nan")), KEY)


def test_signature_checks():
    signed = usage.sign(record(), KEY)
    with pytest.raises(UsageRecordError, match="does not verify"):
        usage.verify(usage.SignedRecord(signed.record.replace(b"task-1", b"task-2"), signed.signature), PUBLIC)
    with pytest.raises(UsageRecordError, match="does not verify"):
        usage.verify(signed, usage.public_key_bytes(Ed25519PrivateKey.generate()))
    with pytest.raises(UsageRecordError, match="not an Ed25519 public key"):
        usage.verify(signed, b"short")


def test_public_key_check():
    usage.check_public_key(PUBLIC)
    for bad in (b"", b"\x00" * 31, PUBLIC + b"\x00"):
        with pytest.raises(UsageRecordError, match=f"is {len(bad)} bytes; send the raw 32-byte"):
            usage.check_public_key(bad)


def test_expect_names_the_first_field_that_differs():
    usage.expect(record(), task_id="task-1", attempt=1)
    with pytest.raises(UsageRecordError, match="the record's attempt is 1 but this upload's is 2"):
        usage.expect(record(), task_id="task-1", attempt=2)


@pytest.mark.parametrize("changes, expected", [
    # 60 s, 1 core, 30 CPU-s: cpu 50 %, memory 128/256 = 50 %: average 50 is not > 50, so
    # multiplier 1.0: int(10) = 10 per report, 60 s = 2 reports.
    ({}, 20.0),
    # 45 s, 2 cores, 81 CPU-s: cpu 90 %; memory 80 %: average 85 > 80, multiplier 1.5;
    # one GPU busy 45 of 45 s: 100 % -> bonus 1.0: int(15 + 1) = 16; 45 s = 1.5 reports.
    ({"ended_ms": 1_045_000, "cpu_limit_millicores": 2000, "cpu_seconds": 81.0,
      "memory_avg_bytes": int(0.8 * 256 * MiB), "gpus": [{"index": 0, "uuid": "G", "gpu_seconds": 45.0}]}, 24.0),
    # Above the limits counts as 100 % (capped): 10 s, 0.5 core used 20 CPU-s, memory over:
    # average 100, multiplier 1.5: int(15) = 15; 10 s = 1/3 report -> 5.0.
    ({"ended_ms": 1_010_000, "cpu_limit_millicores": 500, "cpu_seconds": 20.0,
      "memory_avg_bytes": 512 * MiB}, 5.0),
    # Idle for 7 s: 0.8 multiplier: int(8) = 8; 7/30 of a report -> 1.866... -> 1.87.
    ({"ended_ms": 1_007_000, "cpu_seconds": 0.0, "memory_avg_bytes": 0}, 1.87),
    # Two GPUs, one busy half the run: gpu 25 % -> bonus 0.25; cpu/memory 50 %: int(10.25) = 10.
    ({"gpus": [{"index": 0, "uuid": "A", "gpu_seconds": 30.0}, {"index": 1, "uuid": "B", "gpu_seconds": 0.0}]},
     20.0),
    # Limits not stated (0) count as 0 %: multiplier 0.8 -> 8 per report.
    ({"cpu_limit_millicores": 0, "memory_limit_bytes": 0}, 16.0),
    ({"ended_ms": 1_000_000}, 0.0),  # a 0 s run earns nothing
])
def test_reward_from_a_record(changes, expected):
    assert usage.reward(verify(record(**changes))) == expected


def test_one_formula_for_reports_and_records():
    assert rewards.compute_reward is usage.compute_reward and rewards.multiplier is usage.multiplier
    assert rewards.BASE_REWARD == usage.BASE_REWARD == 10


def test_an_older_state_db_gets_the_usage_columns(tmp_path, monkeypatch):
    state = StateDir(tmp_path / "m").create()
    new = {("nodes", "usage_public_key"), ("tasks", "usage_record"), ("tasks", "usage_signature"), ("tasks", "reward")}
    # The previous release's database: everything but the usage columns, with a node and a finished task.
    monkeypatch.setattr(dbmod, "ADDED_COLUMNS", tuple(c for c in dbmod.ADDED_COLUMNS if (c[0], c[1]) not in new))
    old = dbmod.open_db(state.db)
    old.execute("INSERT INTO nodes (node_id, hostname, facts_json, wg_public_key, vpn_address, credential_hash,"
                " enrolled_at) VALUES ('node-old', 'old-host', '{}', '', '10.88.0.2/32', 'x', 0)")
    task_id = taskdb.create_task(old, {"image": "x"})
    old.execute("UPDATE tasks SET result_size=10, result_sha256=?, result_complete=1", ("ab" * 32,))
    old.close()
    monkeypatch.undo()
    with pytest.raises(sqlite3.OperationalError):  # the columns are not there yet
        sqlite3.connect(state.db).execute("SELECT reward FROM tasks").fetchall()

    conn = dbmod.open_db(state.db)
    assert conn.execute("SELECT usage_public_key FROM nodes").fetchone()[0] is None
    listed = taskdb.list_tasks(conn)[0]
    assert (listed["usage"], listed["usage_signature"], listed["reward"], listed["result_complete"]) == (
        None, None, None, True)
    assert listed["task_id"] == task_id
    registry.learn_usage_key(conn, "node-old", PUBLIC)  # trust on first use works on the migrated file
    assert registry.list_nodes(conn)[0]["usage_public_key"] == PUBLIC.hex()
    conn.close()
