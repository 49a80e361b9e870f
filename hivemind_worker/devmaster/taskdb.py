"""Tasks, their events, log lines and result bookkeeping in the dev-master's database.

A task's ``state`` is the last thing known about it: ``queued`` and ``assigned`` are
the master's own, the rest are what the node reported (``accepted`` ... ``done``,
lower-case names of the protocol's TaskState), plus ``lost`` (the node came back
without it). ``outcome`` is set once, by the first report that ends the task's
process (rejected, exited, failed, cancelled, timed_out, oom_killed, lost), so that
the later ``uploading`` / ``done`` states do not hide how it ended.
Plain values in, plain values out: no protobuf here.
"""

from __future__ import annotations

import json
import secrets
import sqlite3

from hivemind_worker.devmaster.db import Tx, now

OUTCOMES = {"rejected", "exited", "failed", "cancelled", "timed_out", "oom_killed", "lost"}


def create_task(conn: sqlite3.Connection, spec: dict, priority: int = 0, bundle_size: int = 0,
                bundle_sha256: str = "", task_id: str | None = None) -> str:
    task_id = task_id or "task-" + secrets.token_hex(4)
    t = now()
    conn.execute(
        "INSERT INTO tasks (task_id, created_at, priority, spec_json, bundle_size, bundle_sha256, updated_at)"
        " VALUES (?,?,?,?,?,?,?)",
        (task_id, t, priority, json.dumps(spec), bundle_size, bundle_sha256, t),
    )
    return task_id


def get_task(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()


def list_tasks(conn: sqlite3.Connection) -> list[dict]:
    out = []
    for r in conn.execute("SELECT * FROM tasks ORDER BY created_at"):
        d = dict(r)
        d["spec"] = json.loads(d.pop("spec_json"))
        d["result_complete"] = bool(d["result_complete"])
        out.append(d)
    return out


def queued(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM tasks WHERE state='queued' AND cancel_requested=0 ORDER BY priority DESC, created_at"
    ).fetchall()


def assign(conn: sqlite3.Connection, task_id: str, node_id: str) -> bool:
    t = now()
    cur = conn.execute(
        "UPDATE tasks SET state='assigned', node_id=?, assigned_at=?, updated_at=? WHERE task_id=? AND state='queued'",
        (node_id, t, t, task_id),
    )
    return cur.rowcount == 1


def active_on(conn: sqlite3.Connection, node_id: str) -> list[sqlite3.Row]:
    """Tasks assigned to a node whose process has not ended (they hold capacity)."""
    return conn.execute(
        "SELECT * FROM tasks WHERE node_id=? AND outcome IS NULL AND state NOT IN ('queued')", (node_id,)
    ).fetchall()


def unsettled_on(conn: sqlite3.Connection, node_id: str) -> list[sqlite3.Row]:
    """Tasks assigned to a node that are not settled yet (not done, not lost)."""
    return conn.execute(
        "SELECT * FROM tasks WHERE node_id=? AND state NOT IN ('queued','done','lost','rejected')", (node_id,)
    ).fetchall()


def record_event(conn: sqlite3.Connection, node_id: str, task_id: str, state: str, reason: str = "",
                 exit_code: int | None = None, detail: str = "", time_ms: int = 0) -> bool:
    """Store a node's event; False when the task is unknown or not this node's."""
    row = get_task(conn, task_id)
    if row is None or row["node_id"] != node_id:
        return False
    t = now()
    with Tx(conn):
        conn.execute(
            "INSERT INTO task_events (task_id, node_id, state, reason, exit_code, detail, time_ms, received_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (task_id, node_id, state, reason, exit_code, detail, time_ms, t),
        )
        if state in OUTCOMES and row["outcome"] is None:
            conn.execute(
                "UPDATE tasks SET state=?, outcome=?, exit_code=?, reason=?, updated_at=? WHERE task_id=?",
                (state, state, exit_code, reason, t, task_id),
            )
        else:
            conn.execute("UPDATE tasks SET state=?, updated_at=? WHERE task_id=?", (state, t, task_id))
    return True


def settle(conn: sqlite3.Connection, task_id: str, outcome: str, reason: str) -> None:
    """Master-side ending (lost, cancelled while queued)."""
    conn.execute(
        "UPDATE tasks SET state=?, outcome=COALESCE(outcome, ?), reason=CASE WHEN outcome IS NULL THEN ? ELSE reason END,"
        " updated_at=? WHERE task_id=?",
        (outcome, outcome, reason, now(), task_id),
    )


def requeue(conn: sqlite3.Connection, task_id: str) -> None:
    conn.execute(
        "UPDATE tasks SET state='queued', node_id=NULL, assigned_at=NULL, updated_at=? WHERE task_id=?",
        (now(), task_id),
    )


def store_logs(conn: sqlite3.Connection, task_id: str, lines: list[tuple[int, str, str, int]]) -> int:
    """Store (seq, stream, text, time_ms) lines, ignoring duplicates; returns the
    highest seq up to which every line is stored (0 = none)."""
    with Tx(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO logs (task_id, seq, stream, text, time_ms) VALUES (?,?,?,?,?)",
            [(task_id, *line) for line in lines],
        )
        return _advance_mark(conn, task_id)


def contiguous_seq(conn: sqlite3.Connection, task_id: str) -> int:
    with Tx(conn):
        return _advance_mark(conn, task_id)


def _advance_mark(conn: sqlite3.Connection, task_id: str) -> int:
    row = conn.execute("SELECT seq FROM log_marks WHERE task_id=?", (task_id,)).fetchone()
    mark = seq = row[0] if row else 0
    # Only the lines after the mark are read; seqs start at 1 and are unique.
    for (s,) in conn.execute("SELECT seq FROM logs WHERE task_id=? AND seq>? ORDER BY seq", (task_id, mark)):
        if s != seq + 1:
            break
        seq = s
    if seq != mark:
        conn.execute("INSERT INTO log_marks (task_id, seq) VALUES (?, ?)"
                     " ON CONFLICT(task_id) DO UPDATE SET seq=excluded.seq", (task_id, seq))
    return seq


def logs_after(conn: sqlite3.Connection, task_id: str, seq: int, limit: int = 1000) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT seq, stream, text, time_ms FROM logs WHERE task_id=? AND seq>? ORDER BY seq LIMIT ?",
        (task_id, seq, limit),
    ).fetchall()


def events(conn: sqlite3.Connection, task_id: str) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM task_events WHERE task_id=? ORDER BY id", (task_id,))]


def request_cancel(conn: sqlite3.Connection, task_id: str) -> str:
    """Mark a task for cancellation. Returns what happened, for the CLI:
    'unknown', 'finished', 'cancelled' (it was still queued) or 'requested'."""
    with Tx(conn):
        row = get_task(conn, task_id)
        if row is None:
            return "unknown"
        if row["outcome"] is not None:
            return "finished"
        conn.execute("UPDATE tasks SET cancel_requested=1, updated_at=? WHERE task_id=?", (now(), task_id))
        if row["state"] == "queued":
            settle(conn, task_id, "cancelled", "cancelled before it was assigned to a node")
            return "cancelled"
    return "requested"


def pending_cancels(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM tasks WHERE cancel_requested=1 AND cancel_sent=0 AND outcome IS NULL AND node_id IS NOT NULL"
    ).fetchall()


def mark_cancel_sent(conn: sqlite3.Connection, task_id: str) -> None:
    conn.execute("UPDATE tasks SET cancel_sent=1 WHERE task_id=?", (task_id,))


def set_result(conn: sqlite3.Connection, task_id: str, size: int, sha256: str, complete: bool) -> None:
    conn.execute(
        "UPDATE tasks SET result_size=?, result_sha256=?, result_complete=?, updated_at=? WHERE task_id=?",
        (size, sha256, int(complete), now(), task_id),
    )
