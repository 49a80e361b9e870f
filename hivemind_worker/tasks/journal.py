"""The task journal: one SQLite database (WAL) holding every task the node holds.

The journal is the truth about tasks, and the outbox of the task events the master
must learn (the ``events`` table: written in the same transaction as the state change
they report, deleted once the master acknowledged them). The manager writes a state change here *before*
acting on it, so an agent killed at any point (SIGKILL included) can be restarted on
the same state directory and pick up where it was: re-attach a running container,
archive a finished one, re-upload a result the master has not acknowledged.

All SQLite calls run on one dedicated thread (sqlite3 connections are not meant to be
shared between threads, and a single writer keeps writes ordered); the event loop
only awaits them. This module knows nothing about Docker or the control session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from hivemind_worker.errors import HostError
from hivemind_worker.tasks.model import NetworkPolicy, Resources, TaskEvent, TaskRequest, TaskStatus
from hivemind_worker.tasks.usage import MeteredUsage

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT PRIMARY KEY,
    request       TEXT NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    exit_code     INTEGER NOT NULL DEFAULT 0,
    container_id  TEXT NOT NULL DEFAULT '',
    gpu_ids       TEXT NOT NULL DEFAULT '',
    kill_reason   TEXT NOT NULL DEFAULT '',
    created_ms    INTEGER NOT NULL DEFAULT 0,
    started_ms    INTEGER NOT NULL DEFAULT 0,
    ended_ms      INTEGER NOT NULL DEFAULT 0,
    acked_seq     INTEGER NOT NULL DEFAULT 0,
    result_path   TEXT NOT NULL DEFAULT '',
    result_size   INTEGER NOT NULL DEFAULT 0,
    result_sha256 TEXT NOT NULL DEFAULT '',
    updated_ms    INTEGER NOT NULL DEFAULT 0,
    attempt       INTEGER NOT NULL DEFAULT 1,
    event_seq     INTEGER NOT NULL DEFAULT 0,
    usage         TEXT NOT NULL DEFAULT '',
    image_digest  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    task_id   TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    status    TEXT NOT NULL,
    reason    TEXT NOT NULL DEFAULT '',
    exit_code INTEGER NOT NULL DEFAULT 0,
    time_ms   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt, seq)
);
"""
# Columns added after the first release: a journal from an older agent gets them.
_ADDED = {"attempt": "INTEGER NOT NULL DEFAULT 1", "event_seq": "INTEGER NOT NULL DEFAULT 0",
          "usage": "TEXT NOT NULL DEFAULT ''", "image_digest": "TEXT NOT NULL DEFAULT ''"}
_EVENT_COLUMNS = "task_id, attempt, seq, status, reason, exit_code, time_ms"

_COLUMNS = (
    "task_id", "request", "status", "reason", "exit_code", "container_id", "gpu_ids",
    "kill_reason", "created_ms", "started_ms", "ended_ms", "acked_seq", "result_path",
    "result_size", "result_sha256", "updated_ms", "attempt", "event_seq", "usage", "image_digest",
)


def request_to_json(req: TaskRequest) -> str:
    data = asdict(req)
    data["env"] = dict(req.env)
    data["command"] = list(req.command)
    data["network"] = req.network.value
    return json.dumps(data, sort_keys=True)


def request_from_json(text: str) -> TaskRequest:
    data = json.loads(text)
    data["command"] = tuple(data.get("command", ()))
    data["resources"] = Resources(**data.get("resources", {}))
    data["network"] = NetworkPolicy(data.get("network", "none"))
    return TaskRequest(**data)


@dataclass(frozen=True)
class TaskRow:
    """One task as the journal holds it."""

    task_id: str
    request: TaskRequest
    status: TaskStatus
    reason: str = ""
    exit_code: int = 0
    container_id: str = ""
    gpu_ids: tuple[str, ...] = ()
    kill_reason: str = ""  # "cancel: ..." / "timeout" once the agent decided to kill
    created_ms: int = 0
    started_ms: int = 0
    ended_ms: int = 0
    acked_seq: int = 0
    result_path: str = ""
    result_size: int = 0
    result_sha256: str = ""
    updated_ms: int = field(default=0, compare=False)
    event_seq: int = 0  # seq of the last event journaled for this attempt
    usage: MeteredUsage | None = None  # what the meter measured (usage.py); None before any sample
    image_digest: str = ""  # the image id ("sha256:...") the container ran, from the engine

    @property
    def attempt(self) -> int:
        return self.request.attempt

    def with_(self, **changes: Any) -> "TaskRow":
        return replace(self, **changes)

    def _values(self) -> tuple:
        return (
            self.task_id, request_to_json(self.request), self.status.value, self.reason,
            self.exit_code, self.container_id, ",".join(self.gpu_ids), self.kill_reason,
            self.created_ms, self.started_ms, self.ended_ms, self.acked_seq,
            self.result_path, self.result_size, self.result_sha256, self.updated_ms,
            self.request.attempt, self.event_seq, _usage_to_text(self.usage), self.image_digest,
        )

    @classmethod
    def _from(cls, row: tuple) -> "TaskRow":
        v = dict(zip(_COLUMNS, row))
        return cls(
            task_id=v["task_id"], request=request_from_json(v["request"]),
            status=TaskStatus(v["status"]), reason=v["reason"], exit_code=v["exit_code"],
            container_id=v["container_id"],
            gpu_ids=tuple(x for x in v["gpu_ids"].split(",") if x),
            kill_reason=v["kill_reason"], created_ms=v["created_ms"],
            started_ms=v["started_ms"], ended_ms=v["ended_ms"], acked_seq=v["acked_seq"],
            result_path=v["result_path"], result_size=v["result_size"],
            result_sha256=v["result_sha256"], updated_ms=v["updated_ms"], event_seq=v["event_seq"],
            usage=_usage_from_text(v["usage"]), image_digest=v["image_digest"],
        )


def _usage_to_text(usage: MeteredUsage | None) -> str:
    return json.dumps(usage.to_json(), sort_keys=True) if usage is not None else ""


def _usage_from_text(text: str) -> MeteredUsage | None:
    return MeteredUsage.from_json(json.loads(text)) if text else None


class Journal:
    """Async facade over the SQLite file; every call runs on the journal's own thread."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self._path = path
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise HostError(f"task journal {self._path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-journal")
        await self._call(self._open)

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Task requests carry their env, which may hold secrets: owner-only, from
            # the start (SQLite gives its -wal / -shm files the database file's mode).
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self._path, 0o600)
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed change survives the process being killed;
            # only a power cut can lose the last transactions, never corrupt the file.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(SCHEMA)
            have = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
            for name, decl in _ADDED.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {decl}")
        except (sqlite3.Error, OSError) as exc:
            raise HostError(
                f"cannot open the task journal {self._path}: {exc}; check that the state "
                "directory exists, is writable by the agent and the disk is not full"
            ) from exc
        self._conn = conn

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        assert self._conn is not None
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise HostError(f"task journal {self._path}: {exc}; is the disk full?") from exc

    async def put(self, row: TaskRow) -> TaskRow:
        """Insert or replace a task's whole row; returns it with updated_ms set."""
        row = row.with_(updated_ms=int(self._clock() * 1000))
        await self._call(self._exec, *self._row_sql(row))
        return row

    async def put_with_event(self, row: TaskRow, event: TaskEvent) -> tuple[TaskRow, TaskEvent]:
        """Write the row and the event that reports it in one transaction: the event
        gets the attempt's next seq, so a crash can never keep one without the other."""
        seq = row.event_seq + 1
        row = row.with_(updated_ms=int(self._clock() * 1000), event_seq=seq)
        event = replace(event, task_id=row.task_id, seq=seq, attempt=row.attempt)
        await self._call(self._transaction, [self._row_sql(row), self._event_sql(event)])
        return row, event

    async def add_event(self, event: TaskEvent) -> None:
        """Journal an event of a task without a row (an admission rejection)."""
        await self._call(self._transaction, [self._event_sql(event)])

    async def pending_events(self) -> list[TaskEvent]:
        """Events the master has not acknowledged, in the order they were written."""
        rows = await self._call(self._exec, f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY rowid")
        return [
            TaskEvent(task_id, TaskStatus(status), reason, exit_code, "", time_ms, seq, attempt)
            for task_id, attempt, seq, status, reason, exit_code, time_ms in rows
        ]

    async def ack_events(self, task_id: str, attempt: int, seq: int) -> None:
        await self._call(
            self._exec, "DELETE FROM events WHERE task_id=? AND attempt=? AND seq<=?", (task_id, attempt, seq)
        )

    @staticmethod
    def _row_sql(row: TaskRow) -> tuple[str, tuple]:
        marks = ",".join("?" * len(_COLUMNS))
        return f"INSERT OR REPLACE INTO tasks ({','.join(_COLUMNS)}) VALUES ({marks})", row._values()

    @staticmethod
    def _event_sql(e: TaskEvent) -> tuple[str, tuple]:
        return (
            f"INSERT OR REPLACE INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            (e.task_id, e.attempt, e.seq, e.status.value, e.reason, e.exit_code, e.time_ms),
        )

    def _transaction(self, statements: list[tuple[str, tuple]]) -> None:
        assert self._conn is not None
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                conn.execute(sql, args)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:  # e.g. COMMIT failed on a full disk: leave nothing half done
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise HostError(f"task journal {self._path}: {exc}; is the disk full?") from exc

    async def set_acked_seq(self, task_id: str, seq: int) -> None:
        await self._call(
            self._exec, "UPDATE tasks SET acked_seq=? WHERE task_id=? AND acked_seq<?", (seq, task_id, seq)
        )

    async def set_usage(self, task_id: str, usage: MeteredUsage | None, image_digest: str) -> None:
        """Only the meter's columns: a whole-row put() racing with it cannot lose the
        other columns, and a put() carries the latest usage of the in-memory row."""
        await self._call(self._exec, "UPDATE tasks SET usage=?, image_digest=? WHERE task_id=?",
                         (_usage_to_text(usage), image_digest, task_id))

    async def get(self, task_id: str) -> TaskRow | None:
        rows = await self._call(self._exec, f"SELECT {','.join(_COLUMNS)} FROM tasks WHERE task_id=?", (task_id,))
        return TaskRow._from(rows[0]) if rows else None

    async def all(self) -> list[TaskRow]:
        rows = await self._call(self._exec, f"SELECT {','.join(_COLUMNS)} FROM tasks ORDER BY created_ms, task_id")
        return [TaskRow._from(r) for r in rows]

    async def prune_done(self, keep: int) -> None:
        """Forget all but the newest ``keep`` finished-and-delivered tasks."""
        await self._call(
            self._exec,
            "DELETE FROM tasks WHERE status=? AND task_id NOT IN "
            "(SELECT task_id FROM tasks WHERE status=? ORDER BY updated_ms DESC LIMIT ?)",
            (TaskStatus.DONE.value, TaskStatus.DONE.value, keep),
        )
