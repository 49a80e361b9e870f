"""The doctor's runner: a check stuck forever becomes a FAIL at its bound, a
crashing check becomes a FAIL, order is kept, results are redacted."""

from __future__ import annotations

import asyncio
import threading
import time

from hivemind_worker.config import Settings
from hivemind_worker.doctor import CheckResult, DoctorContext, Outcome, run_doctor
from hivemind_worker.doctor.model import Check, passed


def test_stuck_and_crashing_checks_are_bounded():
    forever = threading.Event()

    def stuck(ctx):
        forever.wait()  # never set: like a read from a socket that never answers
        return []

    def crash(ctx):
        raise RuntimeError("boom")

    checks = (
        Check(("first",), lambda ctx: [passed("first", "ok")], "n/a"),
        Check(("stuck a", "stuck b"), stuck, "restart the thing"),
        Check(("crash",), crash, "n/a"),
    )
    ctx = DoctorContext(settings=Settings(), timeout_s=0.5)
    started = time.monotonic()
    results = asyncio.run(run_doctor(Settings(), context=ctx, checks=checks))
    assert time.monotonic() - started < 2
    assert [r.name for r in results] == ["first", "stuck a", "stuck b", "crash"]
    assert results[0].outcome is Outcome.PASS
    assert results[1].outcome is Outcome.FAIL and results[1].detail == "no answer within 0.5s"
    assert results[1].fix == "restart the thing"
    assert results[3].outcome is Outcome.FAIL and "boom" in results[3].detail


def test_results_are_redacted():
    result = CheckResult("x", Outcome.FAIL, "credential=hmc_supersecretvalue123 token: hmt_abcdefghijkl", "fix")
    assert "hmc_supersecretvalue123" not in result.line()
    assert "hmt_abcdefghijkl" not in str(result.as_dict())
    assert CheckResult("y", Outcome.PASS, "fine", "ignored").as_dict()["fix"] == ""
