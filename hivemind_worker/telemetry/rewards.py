"""The platform's reward formula and the ledger that sums it per UTC day and in total.

Formula (as the platform documents it, kept exact; thresholds are strict ">"):
    base_reward = 10; avg_usage = (cpu_usage + memory_usage) / 2
    multiplier = 1.5 if avg_usage > 80 else 1.2 if > 50 else 1.0 if > 20 else 0.8
    gpu_bonus = gpu_usage * 0.01; total_reward = int(base_reward * multiplier + gpu_bonus)

The ledger lives in SQLite under the state dir together with the task history
(id, state, duration, exit code, reward). A report's reward is also credited to the
tasks running at that moment, shared equally, so each finished task shows what it
earned. Calls are short and synchronous (one small transaction); the connection is
guarded by a lock so the loop and a worker thread may both use it.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from hivemind_worker.errors import HostError
from hivemind_worker.telemetry.sample import TelemetrySample
from hivemind_worker.usage import BASE_REWARD, compute_reward, multiplier

DB_FILE = "telemetry.sqlite3"
# The formula is shared with the dev-master's per-task reward (hivemind_worker/usage.py): one copy.
__all__ = ["BASE_REWARD", "DB_FILE", "RewardLedger", "compute_reward", "multiplier", "reward_for", "utc_day"]


def reward_for(sample: TelemetrySample) -> int:
    """The reward of one report; a figure the host could not measure counts as 0."""
    return compute_reward(sample.host.cpu_percent or 0.0, sample.host.memory_percent or 0.0, sample.gpu_percent)


def utc_day(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.timezone.utc).date().isoformat()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS daily_rewards (day TEXT PRIMARY KEY, reward INTEGER NOT NULL, reports INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS task_history (
    task_id TEXT PRIMARY KEY, state TEXT NOT NULL, image TEXT NOT NULL DEFAULT '',
    started_ms INTEGER, finished_ms INTEGER, exit_code INTEGER, reason TEXT NOT NULL DEFAULT '',
    reward REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS task_history_finished ON task_history (finished_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
"""


class RewardLedger:
    def __init__(self, path: Path) -> None:
        """``path``: the database file, normally ``settings.state_dir / DB_FILE``."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(task_history)")}
            if "usage" not in columns:  # a ledger from before signed usage records
                self._db.execute("ALTER TABLE task_history ADD COLUMN usage TEXT")
        except (OSError, sqlite3.Error) as exc:
            raise HostError(f"cannot open the rewards ledger {self.path} ({exc}); check the state dir's owner and mode") from exc
        self._lock = threading.Lock()

    def _run(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def record_report(self, time_ms: int, reward: int, running_task_ids: Iterable[str] = ()) -> None:
        running = list(running_task_ids)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO daily_rewards (day, reward, reports) VALUES (?, ?, 1) "
                "ON CONFLICT(day) DO UPDATE SET reward = reward + excluded.reward, reports = reports + 1",
                (utc_day(time_ms), reward),
            )
            self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [("last_report_ms", time_ms), ("last_reward", reward)])
            for task_id in running:
                self._db.execute(
                    "INSERT INTO task_history (task_id, state, started_ms, reward) VALUES (?, 'running', ?, ?) "
                    "ON CONFLICT(task_id) DO UPDATE SET reward = reward + excluded.reward",
                    (task_id, time_ms, reward / len(running)),
                )

    def record_task(self, task_id: str, state: str, *, image: str = "", started_ms: int | None = None,
                    finished_ms: int | None = None, exit_code: int | None = None, reason: str = "") -> None:
        """Upsert a task's row; call on start and on finish (fields left None keep their value;
        the first finish time is kept, so a later "done" after the upload does not move it)."""
        self._run(
            "INSERT INTO task_history (task_id, state, image, started_ms, finished_ms, exit_code, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task_id) DO UPDATE SET state = excluded.state, "
            "image = CASE WHEN excluded.image != '' THEN excluded.image ELSE image END, "
            "started_ms = COALESCE(excluded.started_ms, started_ms), "
            "finished_ms = COALESCE(finished_ms, excluded.finished_ms), "
            "exit_code = COALESCE(excluded.exit_code, exit_code), "
            "reason = CASE WHEN excluded.reason != '' THEN excluded.reason ELSE reason END",
            (task_id, state, image, started_ms, finished_ms, exit_code, reason),
        )

    def record_usage(self, task_id: str, record_json: str) -> None:
        """The signed usage record the master received with the task's result (JSON text)."""
        self._run("INSERT INTO task_history (task_id, state, usage) VALUES (?, 'uploading', ?) "
                  "ON CONFLICT(task_id) DO UPDATE SET usage = excluded.usage", (task_id, record_json))

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """Finished tasks, newest first, as the monitor's /api/history rows."""
        rows = self._run(
            "SELECT task_id, state, image, started_ms, finished_ms, exit_code, reason, reward, usage FROM task_history "
            "WHERE finished_ms IS NOT NULL ORDER BY finished_ms DESC LIMIT ?", (limit,))
        return [
            {"task_id": r[0], "state": r[1], "image": r[2], "started_ms": r[3], "finished_ms": r[4],
             "duration_s": round((r[4] - r[3]) / 1000, 3) if r[3] is not None and r[4] is not None else None,
             "exit_code": r[5], "reason": r[6], "reward": round(r[7], 2),
             "usage": json.loads(r[8]) if r[8] else None, "usage_signed": bool(r[8])}
            for r in rows
        ]

    def task_reward(self, task_id: str) -> float:
        rows = self._run("SELECT reward FROM task_history WHERE task_id = ?", (task_id,))
        return round(rows[0][0], 2) if rows else 0.0

    def earnings(self, now_ms: int, days: int = 30) -> dict[str, Any]:
        by_day = self._run("SELECT day, reward, reports FROM daily_rewards ORDER BY day DESC LIMIT ?", (days,))
        total, reports = self._run("SELECT COALESCE(SUM(reward), 0), COALESCE(SUM(reports), 0) FROM daily_rewards")[0]
        meta = dict(self._run("SELECT key, value FROM meta"))
        today = utc_day(now_ms)
        return {
            "total": int(total),
            "reports": int(reports),
            "today": next((int(r[1]) for r in by_day if r[0] == today), 0),
            "day": today,
            "by_day": [{"day": r[0], "reward": int(r[1]), "reports": int(r[2])} for r in reversed(by_day)],
            "last_reward": meta.get("last_reward"),
            "last_report_ms": meta.get("last_report_ms"),
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
