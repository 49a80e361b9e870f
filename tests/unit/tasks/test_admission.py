"""Admission arithmetic and the pressure gauge."""

from __future__ import annotations

import pytest

from hivemind_worker.errors import TaskDeferred, TaskRejected
from hivemind_worker.tasks import admission
from hivemind_worker.tasks.model import Resources, TaskRequest
from hivemind_worker.tasks.pressure import LOW_SHARES, NORMAL_SHARES, HostSize, PressureGauge, foreign_load, plan_shares

GiB = 1024**3
NODE = Resources(8000, 16 * GiB, 0)


def check(need: Resources, reserved: Resources = Resources(), active: int = 0, **kw) -> None:
    admission.check(need, capacity=NODE, reserved=reserved, active=active, max_concurrent=4, **kw)


def test_fits() -> None:
    check(Resources(4000, 8 * GiB), reserved=Resources(4000, 8 * GiB), active=3)


@pytest.mark.parametrize(
    "need,reserved,active,kw,message",
    [
        (Resources(16000, GiB), Resources(), 0, {}, "needs 16.0 CPUs, the node has only 8.0 CPUs in all"),
        (Resources(1000, 32 * GiB), Resources(), 0, {}, "the node has only 16.00 GiB in all"),
        (Resources(1000, GiB, 1), Resources(), 0, {}, "needs 1 GPU, the node has none"),
        # Never fits, so it is rejected even while the node drains.
        (Resources(16000, GiB), Resources(), 0, {"drain": "operator"}, "the node has only 8.0 CPUs"),
        (Resources(-1, GiB), Resources(), 0, {}, "negative resources"),
    ],
)
def test_rejections_never_here_name_the_missing_resource(need, reserved, active, kw, message) -> None:
    with pytest.raises(TaskRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(need, reserved, active, **kw)


@pytest.mark.parametrize(
    "need,reserved,active,kw,message",
    [
        (Resources(4000, GiB), Resources(6500, 0), 1, {}, "needs 4.0 CPUs, 1.5 free"),
        (Resources(1000, 4 * GiB), Resources(0, 14 * GiB), 1, {}, "needs 4.00 GiB memory, 2.00 GiB free"),
        (Resources(1000, GiB), Resources(), 4, {}, "node busy: 4 of 4 task slots in use"),
        (Resources(1000, GiB), Resources(), 0, {"drain": "operator"}, "node draining (operator)"),
        (Resources(1000, GiB), Resources(), 0, {"pressure": "CPU 97% > 90%"}, "node under pressure (CPU 97% > 90%)"),
        (Resources(1000, GiB), Resources(), 0, {"disk": "1.0 GiB free"}, "node low on disk (1.0 GiB free)"),
    ],
)
def test_deferrals_not_now_name_the_reason(need, reserved, active, kw, message) -> None:
    with pytest.raises(TaskDeferred, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(need, reserved, active, **kw)


def test_foreign_load_subtracts_the_nodes_own_tasks() -> None:
    size = HostSize(cores=2, memory_bytes=8 * GiB)
    # Two own tasks saturate both cores: the host is busy, not under pressure.
    assert foreign_load(99.0, 40.0, [(100.0, GiB), (98.0, GiB)], size) == (0.0, 15.0)
    # Half a core of someone else's on top of one own core.
    cpu, mem = foreign_load(75.0, 30.0, [(50.0, 0)], size)
    assert (cpu, mem) == (50.0, 30.0)
    # Samples taken at slightly different moments never go below zero.
    assert foreign_load(10.0, 5.0, [(100.0, 4 * GiB)], size) == (0.0, 0.0)
    assert foreign_load(95.0, 85.0, [], size) == (95.0, 85.0)
    gauge = PressureGauge(cpu_threshold=90, memory_threshold=80)
    assert not gauge.update(*foreign_load(99.0, 40.0, [(190.0, 0)], size)) and not gauge.under_pressure


def test_defaults_for_unspecified_requests_never_unlimited() -> None:
    small = Resources(500, 256 * 1024**2)
    r = admission.effective_resources(TaskRequest("t"), small)
    assert r == Resources(500, 256 * 1024**2, 0)
    r = admission.effective_resources(TaskRequest("t"), NODE)
    assert r == Resources(admission.DEFAULT_CPU_MILLICORES, admission.DEFAULT_MEMORY_BYTES, 0)


def test_ledger() -> None:
    ledger = admission.Ledger.empty(NODE)
    ledger.hold("a", Resources(1000, GiB))
    ledger.hold("b", Resources(2000, GiB))
    assert ledger.free() == Resources(5000, 14 * GiB) and ledger.active == 2
    ledger.release("a")
    ledger.release("a")
    assert ledger.free() == Resources(6000, 15 * GiB)


def test_pressure_gauge_with_hysteresis() -> None:
    g = PressureGauge(cpu_threshold=90, memory_threshold=80)
    assert not g.update(50, 50) and not g.under_pressure
    assert g.update(95, 50) and g.reason == "CPU 95% > 90%"
    assert not g.update(88, 50) and g.under_pressure  # within the hysteresis band
    assert g.update(70, 50) and not g.under_pressure
    assert g.update(10, 85) and g.reason == "memory 85% > 80%"


def test_plan_shares_lowers_only_lower_priorities() -> None:
    running = [("hi", 5), ("lo", 1), ("hi2", 5)]
    assert plan_shares(running, False) == {"hi": NORMAL_SHARES, "lo": NORMAL_SHARES, "hi2": NORMAL_SHARES}
    assert plan_shares(running, True) == {"hi": NORMAL_SHARES, "lo": LOW_SHARES, "hi2": NORMAL_SHARES}
