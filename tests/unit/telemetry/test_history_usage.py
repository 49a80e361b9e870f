"""The task history keeps each delivered task's signed usage record (what the node's
`tasks --json` and monitor show), and a ledger from before records gains the column."""

from __future__ import annotations

import json
import sqlite3

from hivemind_worker.telemetry.rewards import RewardLedger

RECORD = {"task_id": "a", "cpu_seconds": 1.5, "memory_peak_bytes": 1 << 20, "gpus": []}


def test_the_record_is_shown_with_its_task(tmp_path):
    ledger = RewardLedger(tmp_path / "t.sqlite3")
    ledger.record_task("a", "running", started_ms=1_000)
    ledger.record_task("a", "exited", finished_ms=3_000, exit_code=0)
    ledger.record_usage("a", json.dumps(RECORD))
    ledger.record_task("a", "done", finished_ms=4_000)  # delivered: the record stays
    ledger.record_task("b", "failed", finished_ms=2_000, exit_code=1)
    a, b = ledger.history()
    assert (a["task_id"], a["usage"], a["usage_signed"]) == ("a", RECORD, True)
    assert (b["task_id"], b["usage"], b["usage_signed"]) == ("b", None, False)
    ledger.close()


def test_a_ledger_from_before_records_gains_the_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE task_history (task_id TEXT PRIMARY KEY, state TEXT NOT NULL, image TEXT NOT NULL "
                 "DEFAULT '', started_ms INTEGER, finished_ms INTEGER, exit_code INTEGER, reason TEXT NOT NULL "
                 "DEFAULT '', reward REAL NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO task_history (task_id, state, started_ms, finished_ms) VALUES ('old', 'done', 1, 2)")
    conn.commit()
    conn.close()
    ledger = RewardLedger(path)
    assert ledger.history()[0]["usage"] is None
    ledger.record_usage("old", json.dumps(RECORD))
    assert ledger.history()[0]["usage"] == RECORD
    ledger.close()
    RewardLedger(path).close()  # opened again: nothing to add
