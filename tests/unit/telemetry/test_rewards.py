"""The platform's reward formula at its thresholds, and the SQLite ledger."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from hivemind_worker.telemetry.rewards import RewardLedger, compute_reward, multiplier, utc_day


@pytest.mark.parametrize(
    "avg, expected",
    [
        (0, 0.8), (19.99, 0.8), (20, 0.8), (20.01, 1.0),
        (49.99, 1.0), (50, 1.0), (50.01, 1.2),
        (79.99, 1.2), (80, 1.2), (80.01, 1.5), (100, 1.5),
    ],
)
def test_multiplier_thresholds_are_strict(avg, expected):
    assert multiplier(avg) == expected


@pytest.mark.parametrize(
    "cpu, mem, gpu, reward",
    [
        # avg exactly on a threshold stays in the lower band
        (20, 20, 0, 8), (19, 21, 0, 8), (21, 20, 0, 10), (20, 21, 0, 10),
        (50, 50, 0, 10), (49, 51, 0, 10), (51, 50, 0, 12), (50, 50.5, 0, 12),
        (80, 80, 0, 12), (79, 81, 0, 12), (81, 80, 0, 15), (80, 80.02, 0, 15),
        (0, 0, 0, 8), (100, 100, 0, 15),
        # gpu_bonus = gpu_usage * 0.01, added before int()
        (10, 10, 100, 9), (10, 10, 99, 8), (60, 60, 80, 12), (100, 100, 100, 16),
        (30, 30, 50, 10),
    ],
)
def test_total_reward_table(cpu, mem, gpu, reward):
    assert compute_reward(cpu, mem, gpu) == reward


def test_formula_literally():
    for cpu in range(0, 101, 7):
        for mem in range(0, 101, 11):
            for gpu in (0, 33, 100):
                avg_usage = (cpu + mem) / 2
                m = 1.5 if avg_usage > 80 else 1.2 if avg_usage > 50 else 1.0 if avg_usage > 20 else 0.8
                assert compute_reward(cpu, mem, gpu) == int(10 * m + gpu * 0.01)


def ms(y, mo, d, h=0, mi=0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, tzinfo=dt.timezone.utc).timestamp() * 1000)


def test_ledger_sums_per_utc_day_and_total_and_persists(tmp_path):
    path = tmp_path / "state" / "telemetry.sqlite3"
    ledger = RewardLedger(path)
    ledger.record_report(ms(2026, 11, 27, 23, 59), 12)
    ledger.record_report(ms(2026, 11, 28, 0, 0), 8)
    ledger.record_report(ms(2026, 11, 28, 12, 0), 15)
    e = ledger.earnings(ms(2026, 11, 28, 13))
    assert e["total"] == 35 and e["today"] == 23 and e["reports"] == 3 and e["day"] == "2026-11-28"
    assert e["by_day"] == [{"day": "2026-11-27", "reward": 12, "reports": 1},
                           {"day": "2026-11-28", "reward": 23, "reports": 2}]
    assert e["last_reward"] == 15 and e["last_report_ms"] == ms(2026, 11, 28, 12)
    ledger.close()
    again = RewardLedger(path)
    assert again.earnings(ms(2026, 11, 29))["today"] == 0
    assert again.earnings(ms(2026, 11, 29))["total"] == 35
    again.close()


def test_task_history_and_shared_rewards(tmp_path):
    ledger = RewardLedger(tmp_path / "t.sqlite3")
    t0 = ms(2026, 11, 28, 10)
    ledger.record_task("a", "running", image="img:1", started_ms=t0)
    ledger.record_task("b", "running", started_ms=t0)
    ledger.record_report(t0 + 30_000, 12, ["a", "b"])
    ledger.record_report(t0 + 60_000, 15, ["a"])
    ledger.record_task("a", "done", finished_ms=t0 + 75_500, exit_code=0)
    ledger.record_task("b", "oom_killed", finished_ms=t0 + 40_000, exit_code=137, reason="memory limit 256 MiB")
    assert ledger.history() == [
        {"task_id": "a", "state": "done", "image": "img:1", "started_ms": t0, "finished_ms": t0 + 75_500,
         "duration_s": 75.5, "exit_code": 0, "reason": "", "reward": 21.0, "usage": None, "usage_signed": False},
        {"task_id": "b", "state": "oom_killed", "image": "", "started_ms": t0, "finished_ms": t0 + 40_000,
         "duration_s": 40.0, "exit_code": 137, "reason": "memory limit 256 MiB", "reward": 6.0, "usage": None, "usage_signed": False},
    ]
    assert ledger.task_reward("a") == 21.0 and ledger.task_reward("zzz") == 0.0
    assert ledger.earnings(t0)["total"] == 27  # the node's total is not double-counted
    ledger.close()


def test_ledger_file_is_real_sqlite(tmp_path):
    ledger = RewardLedger(tmp_path / "t.sqlite3")
    ledger.record_report(ms(2026, 1, 1), 10)
    ledger.close()
    with sqlite3.connect(tmp_path / "t.sqlite3") as db:
        assert db.execute("SELECT day, reward FROM daily_rewards").fetchall() == [("2026-01-01", 10)]


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    from hivemind_worker.errors import HostError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HostError, match="state dir"):
        RewardLedger(blocker / "t.sqlite3")


def test_utc_day():
    assert utc_day(ms(2026, 11, 28, 23, 59)) == "2026-11-28"
