"""The dev-master's SQLite database: schema and connections.

Every CLI command opens its own connection on ``state.db``; `serve` holds one for
its whole life. WAL mode lets the CLI write (submit, token create, revoke, cancel)
while `serve` reads; `serve` notices such writes cheaply through
``PRAGMA data_version`` (see ``changed()``), so no extra signalling is needed.

Statements here are short and local; the server calls them from its event loop
directly, because a thread hop would cost more than the statement itself.
Times are unix seconds (float) unless a column name ends in ``_ms``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    uses_left INTEGER NOT NULL,
    uses_total INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    facts_json TEXT NOT NULL,
    wg_public_key TEXT NOT NULL,
    vpn_address TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    enrolled_at REAL NOT NULL,
    revoked_at REAL,
    draining INTEGER NOT NULL DEFAULT 0,
    session_state TEXT NOT NULL DEFAULT 'never',
    agent_version TEXT NOT NULL DEFAULT '',
    capacity_json TEXT NOT NULL DEFAULT '{}',
    last_seen_at REAL,
    last_report_at REAL,
    last_telemetry TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    connected_at REAL NOT NULL,
    disconnected_at REAL,
    end_reason TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    spec_json TEXT NOT NULL,
    bundle_size INTEGER NOT NULL DEFAULT 0,
    bundle_sha256 TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'queued',
    node_id TEXT,
    assigned_at REAL,
    outcome TEXT,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_sent INTEGER NOT NULL DEFAULT 0,
    result_size INTEGER,
    result_sha256 TEXT,
    result_complete INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (state, priority DESC, created_at);
CREATE TABLE IF NOT EXISTS task_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    node_id TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    detail TEXT NOT NULL DEFAULT '',
    time_ms INTEGER,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, id);
-- A task's log as chunks: lines first_seq..last_seq of one stream, read at one time,
-- as the bytes the task wrote (each line ending in a newline); chunks never overlap. A
-- rowid table with an index, not WITHOUT ROWID: its rows are up to a few hundred KB,
-- and the index's small entries keep the lookups by seq off the text's pages.
CREATE TABLE IF NOT EXISTS log_chunks (
    task_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    time_ms INTEGER,
    text BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS log_chunks_seq ON log_chunks (task_id, first_seq);
-- Per task, the highest seq up to which every log line is stored: advancing it
-- over each new batch keeps storing O(batch) however long the log grows.
CREATE TABLE IF NOT EXISTS log_marks (
    task_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""


# Columns added after the first release: ALTER TABLE brings an older state.db up to
# date in place (new databases get them the same way, so each is declared once).
ADDED_COLUMNS = (
    ("nodes", "drain_reason", "TEXT NOT NULL DEFAULT ''"),
    # The current attempt (TaskSpec.attempt, from 1); earlier ones live in task_events.
    ("tasks", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("tasks", "event_seq", "INTEGER NOT NULL DEFAULT 0"),  # last applied TaskEvent.seq of the attempt
    ("tasks", "retry_pending", "INTEGER NOT NULL DEFAULT 0"),  # lost; re-queued once settled on its node
    ("tasks", "defer_count", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "deferred_by", "TEXT"),
    ("tasks", "deferred_until", "REAL"),  # before this, not offered again to deferred_by
    ("tasks", "first_deferred_at", "REAL"),
    ("tasks", "log_lines", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "log_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("task_events", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("task_events", "seq", "INTEGER NOT NULL DEFAULT 0"),
    # Signed usage records: the node's raw Ed25519 key (NULL: none on file, records not
    # required), and per task the record's signed bytes, signature and reward (NULL:
    # taken without a record, from a node with no key).
    ("nodes", "usage_public_key", "BLOB"),
    ("tasks", "usage_record", "BLOB"),
    ("tasks", "usage_signature", "BLOB"),
    ("tasks", "reward", "REAL"),
)


def _add_columns(conn: sqlite3.Connection) -> None:
    for table, column, decl in ADDED_COLUMNS:
        if any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})")):
            continue
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN where a transaction matters)."""
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _migrate_logs(conn: sqlite3.Connection) -> None:
    """A state.db from before chunks keeps a line per row in ``logs``: each becomes a
    one-line chunk (a "\n" in its text written as "\\n", as a node's line would be
    now), once; the old table goes."""
    exists = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='logs'"
    if conn.execute(exists).fetchone() is None:
        return
    with Tx(conn):
        if conn.execute(exists).fetchone() is None:  # another process migrated it first
            return
        conn.execute("INSERT OR IGNORE INTO log_chunks (task_id, first_seq, last_seq, stream, time_ms, text)"
                     " SELECT task_id, seq, seq, stream, time_ms, CAST(replace(text, char(10), '\\n') || char(10) AS BLOB)"
                     " FROM logs ORDER BY task_id, seq")
        conn.execute("DROP TABLE logs")


def open_db(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    conn.executescript(SCHEMA)
    _add_columns(conn)
    _migrate_logs(conn)
    if path.exists():
        path.chmod(0o600)
    return conn


class ChangeWatch:
    """Tells whether *another* connection committed since the last call."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._version = self._read()

    def _read(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self) -> bool:
        version = self._read()
        if version != self._version:
            self._version = version
            return True
        return False


class Tx:
    """``with Tx(conn):`` -> BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")


def now() -> float:
    return time.time()
