"""Tasks, their events, log lines and result bookkeeping in the dev-master's database.

A task's ``state`` is the last thing known about it: ``queued`` and ``assigned`` are
the master's own, the rest are what the node reported (``accepted`` ... ``done``,
lower-case names of the protocol's TaskState), plus ``lost`` (an infrastructure
failure, reported by the node or decided here). ``outcome`` is set once per attempt,
by the first report that ends the task's process (rejected, exited, failed,
cancelled, timed_out, oom_killed, lost), so that the later ``uploading`` / ``done``
states do not hide how it ended.

Attempts: a lost task may run again as attempt N+1 (``new_attempt``); the row then
describes the new attempt and ``task_events`` (with its ``attempt`` column) keeps
what happened to every earlier one. Events with a seq are applied at most once and in
order (``apply_event``); ``event_seq`` is the last one applied for the attempt.
Plain values in, plain values out: no protobuf, no policy (see ``attempts``).
"""

from __future__ import annotations

import json
import secrets
import sqlite3

from hivemind_worker.devmaster.db import Tx, now
# A task's log lines live in logstore; their callers know them by these names.
from hivemind_worker.devmaster.logstore import LogLimits, contiguous_seq, logs_after, store_logs  # noqa: F401
from hivemind_worker.errors import TaskError

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


def known_task(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    """A task the caller knows exists (tasks are never deleted)."""
    row = get_task(conn, task_id)
    if row is None:
        raise TaskError(f"task {task_id} is missing from the dev-master's database; "
                        "was the state directory replaced while it ran? restart `dev-master serve`")
    return row


def list_tasks(conn: sqlite3.Connection) -> list[dict]:
    """Every task as plain JSON-ready values; ``usage`` is the verified record (parsed
    from the signed bytes), ``usage_signature`` its signature in hex."""
    out = []
    for r in conn.execute("SELECT * FROM tasks ORDER BY created_at"):
        d = dict(r)
        d["spec"] = json.loads(d.pop("spec_json"))
        d["result_complete"] = bool(d["result_complete"])
        record, signature = d.pop("usage_record"), d.pop("usage_signature")
        d["usage"] = json.loads(record) if record else None
        d["usage_signature"] = signature.hex() if signature else None
        out.append(d)
    return out


def queued(conn: sqlite3.Connection, limit: int = -1) -> list[sqlite3.Row]:
    """Queued tasks in assignment order, the first ``limit`` of them (-1: all)."""
    return conn.execute(
        "SELECT * FROM tasks WHERE state='queued' AND cancel_requested=0 ORDER BY priority DESC, created_at LIMIT ?",
        (limit,),
    ).fetchall()


def assign(conn: sqlite3.Connection, task_id: str, node_id: str) -> bool:
    t = now()
    with Tx(conn):
        cur = conn.execute(
            "UPDATE tasks SET state='assigned', node_id=?, assigned_at=?, updated_at=? WHERE task_id=? AND state='queued'",
            (node_id, t, t, task_id),
        )
        if cur.rowcount != 1:
            return False
        # The history names every node an attempt went to: a node coming back with an
        # old attempt is told apart from one that never had the task.
        _history(conn, task_id, node_id, "assigned")
    return True


def _history(conn: sqlite3.Connection, task_id: str, node_id: str | None, state: str, reason: str = "",
             exit_code: int | None = None, detail: str = "", time_ms: int = 0, seq: int = 0) -> None:
    conn.execute(
        "INSERT INTO task_events (task_id, node_id, state, reason, exit_code, detail, time_ms, received_at, attempt, seq)"
        " SELECT ?,?,?,?,?,?,?,?, attempt, ? FROM tasks WHERE task_id=?",
        (task_id, node_id, state, reason, exit_code, detail, time_ms, now(), seq, task_id),
    )


def had_attempt(conn: sqlite3.Connection, task_id: str, node_id: str, attempt: int) -> bool:
    """Whether ``attempt`` of the task was ever given to ``node_id``."""
    return conn.execute(
        "SELECT 1 FROM task_events WHERE task_id=? AND node_id=? AND attempt=? AND state='assigned' LIMIT 1",
        (task_id, node_id, attempt),
    ).fetchone() is not None


def active_on(conn: sqlite3.Connection, node_id: str) -> list[sqlite3.Row]:
    """Tasks assigned to a node whose process has not ended (they hold capacity)."""
    return conn.execute(
        "SELECT * FROM tasks WHERE node_id=? AND outcome IS NULL AND state NOT IN ('queued')", (node_id,)
    ).fetchall()


def unsettled_on(conn: sqlite3.Connection, node_id: str) -> list[sqlite3.Row]:
    """Tasks of a node whose attempt is not settled there yet: not done, not rejected,
    not lost for good (a lost task waiting to run again waits for its node's DONE)."""
    return conn.execute(
        "SELECT * FROM tasks WHERE node_id=? AND state NOT IN ('queued','done','rejected')"
        " AND NOT (state='lost' AND retry_pending=0)", (node_id,)
    ).fetchall()


def unsettled_on_absent(conn: sqlite3.Connection, connected: list[str], seen_before: float) -> list[sqlite3.Row]:
    """Unsettled tasks of nodes without a session, last seen before ``seen_before``."""
    marks = ",".join("?" * len(connected))
    return conn.execute(
        "SELECT t.*, n.last_seen_at FROM tasks t JOIN nodes n ON n.node_id = t.node_id"
        f" WHERE t.node_id NOT IN ({marks}) AND COALESCE(n.last_seen_at, 0) < ?"
        " AND t.state NOT IN ('queued','done','rejected') AND NOT (t.state='lost' AND t.retry_pending=0)",
        (*connected, seen_before),
    ).fetchall()


def record_event(conn: sqlite3.Connection, node_id: str, task_id: str, state: str, reason: str = "",
                 exit_code: int | None = None, detail: str = "", time_ms: int = 0) -> bool:
    """Store a node's unsequenced event for the task's current attempt; False when the
    task is unknown or not this node's."""
    return apply_event(conn, node_id, task_id, 0, 0, state, reason, exit_code, detail, time_ms)[0] == "applied"


def apply_event(conn: sqlite3.Connection, node_id: str, task_id: str, attempt: int, seq: int, state: str,
                reason: str = "", exit_code: int | None = None, detail: str = "",
                time_ms: int = 0) -> tuple[str, int]:
    """Apply a node's event at most once, in seq order. ``attempt`` 0 means the
    current one. Returns (what happened, the attempt's last applied seq): ``applied``;
    ``duplicate`` (seq already applied); ``gap`` (an earlier seq is missing: not
    applied); ``stale`` (unknown task, another node's, or another attempt)."""
    t = now()
    with Tx(conn):
        row = get_task(conn, task_id)
        if row is None or row["node_id"] != node_id or (attempt and attempt != row["attempt"]):
            return "stale", 0
        mark = row["event_seq"]
        if seq and seq <= mark:
            return "duplicate", mark
        if seq and seq > mark + 1:
            return "gap", mark
        _history(conn, task_id, node_id, state, reason, exit_code, detail, time_ms, seq)
        if state in OUTCOMES and row["outcome"] is None:
            conn.execute("UPDATE tasks SET outcome=?, exit_code=?, reason=? WHERE task_id=?",
                         (state, exit_code, reason, task_id))
        if state in ("accepted", "running"):  # it runs: any deferral is over
            conn.execute("UPDATE tasks SET defer_count=0, deferred_by=NULL, deferred_until=NULL,"
                         " first_deferred_at=NULL WHERE task_id=?", (task_id,))
        conn.execute("UPDATE tasks SET state=?, event_seq=MAX(event_seq, ?), updated_at=? WHERE task_id=?",
                     (state, seq, t, task_id))
    return "applied", max(seq, mark)


def settle(conn: sqlite3.Connection, task_id: str, outcome: str, reason: str) -> None:
    """Master-side ending (rejected after deferring too long, a spec no node takes)."""
    with Tx(conn):
        _settle(conn, task_id, outcome, reason)


def _settle(conn: sqlite3.Connection, task_id: str, outcome: str, reason: str) -> None:
    conn.execute(
        "UPDATE tasks SET state=?, outcome=COALESCE(outcome, ?),"
        " reason=CASE WHEN outcome IS NULL THEN ? ELSE reason END, updated_at=? WHERE task_id=?",
        (outcome, outcome, reason, now(), task_id),
    )
    _history(conn, task_id, None, outcome, reason, detail="decided by the master")


def mark_lost(conn: sqlite3.Connection, task_id: str, reason: str, *, retry: bool, detach: bool) -> None:
    """The attempt is lost (an outcome already known, e.g. exited, is kept). ``detach``:
    the master gives up on the node's copy (the node is gone or came back without it),
    so whatever that node still sends about this attempt is stale."""
    with Tx(conn):
        row = known_task(conn, task_id)
        _history(conn, task_id, row["node_id"], "lost", reason, detail="decided by the master" if detach else "")
        conn.execute(
            "UPDATE tasks SET state='lost', outcome=COALESCE(outcome, 'lost'),"
            " reason=CASE WHEN outcome IS NULL OR outcome='lost' THEN ? ELSE reason || '; ' || ? END,"
            " retry_pending=?, node_id=CASE WHEN ? THEN NULL ELSE node_id END, updated_at=? WHERE task_id=?",
            (reason, reason, int(retry), int(detach), now(), task_id),
        )


def new_attempt(conn: sqlite3.Connection, task_id: str, reason: str) -> int:
    """Queue the task again as its next attempt; returns the attempt number. The old
    attempt's log lines go (its result archive keeps them): the new attempt's seqs
    start at 1 again."""
    with Tx(conn):
        conn.execute(
            "UPDATE tasks SET attempt=attempt+1, state='queued', node_id=NULL, assigned_at=NULL, outcome=NULL,"
            " exit_code=NULL, reason=?, cancel_sent=0, result_size=NULL, result_sha256=NULL, result_complete=0,"
            " usage_record=NULL, usage_signature=NULL, reward=NULL,"
            " event_seq=0, retry_pending=0, defer_count=0, deferred_by=NULL, deferred_until=NULL,"
            " first_deferred_at=NULL, log_lines=0, log_bytes=0, updated_at=? WHERE task_id=?",
            (reason, now(), task_id),
        )
        conn.execute("DELETE FROM log_chunks WHERE task_id=?", (task_id,))
        conn.execute("DELETE FROM log_marks WHERE task_id=?", (task_id,))
        return known_task(conn, task_id)["attempt"]


def set_retry_pending(conn: sqlite3.Connection, task_id: str, pending: bool) -> None:
    conn.execute("UPDATE tasks SET retry_pending=? WHERE task_id=?", (int(pending), task_id))


def requeue(conn: sqlite3.Connection, task_id: str) -> None:
    """Back in the queue, same attempt (it never reached a node)."""
    conn.execute(
        "UPDATE tasks SET state='queued', node_id=NULL, assigned_at=NULL, event_seq=0, updated_at=? WHERE task_id=?",
        (now(), task_id),
    )


def defer(conn: sqlite3.Connection, task_id: str, node_id: str, reason: str, backoff_s: float) -> None:
    """"Not now" from ``node_id``: queued again, not offered to that node for ``backoff_s``."""
    t = now()
    with Tx(conn):
        conn.execute(
            "UPDATE tasks SET state='queued', node_id=NULL, assigned_at=NULL, event_seq=0, reason=?,"
            " defer_count=defer_count+1, deferred_by=?, deferred_until=?,"
            " first_deferred_at=COALESCE(first_deferred_at, ?), updated_at=? WHERE task_id=?",
            (f"deferred by {node_id}: {reason}", node_id, t + backoff_s, t, t, task_id),
        )


def deferred_since(conn: sqlite3.Connection, before: float) -> list[sqlite3.Row]:
    """Queued tasks whose first deferral is older than ``before``."""
    return conn.execute(
        "SELECT * FROM tasks WHERE state='queued' AND first_deferred_at IS NOT NULL AND first_deferred_at < ?",
        (before,),
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
            if row["retry_pending"]:  # lost, about to run again: it will not
                conn.execute("UPDATE tasks SET cancel_requested=1, updated_at=? WHERE task_id=?", (now(), task_id))
                return "requested"
            return "finished"
        conn.execute("UPDATE tasks SET cancel_requested=1, updated_at=? WHERE task_id=?", (now(), task_id))
        if row["state"] == "queued":
            _settle(conn, task_id, "cancelled", "cancelled before it was assigned to a node")
            return "cancelled"
    return "requested"


def pending_cancels(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM tasks WHERE cancel_requested=1 AND cancel_sent=0 AND outcome IS NULL AND node_id IS NOT NULL"
    ).fetchall()


def mark_cancel_sent(conn: sqlite3.Connection, task_id: str) -> None:
    conn.execute("UPDATE tasks SET cancel_sent=1 WHERE task_id=?", (task_id,))


def set_result(conn: sqlite3.Connection, task_id: str, size: int, sha256: str, complete: bool,
               usage: tuple[bytes, bytes, float] | None = None) -> None:
    """The result's bookkeeping and, in the same statement, its verified usage record
    (signed bytes, signature, reward); None stores no record."""
    record, signature, reward = usage or (None, None, None)
    conn.execute(
        "UPDATE tasks SET result_size=?, result_sha256=?, result_complete=?, usage_record=?, usage_signature=?,"
        " reward=?, updated_at=? WHERE task_id=?",
        (size, sha256, int(complete), record, signature, reward, now(), task_id),
    )
