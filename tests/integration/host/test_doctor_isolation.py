"""`doctor` reports the isolation in force around tasks - task uid, OCI runtime,
userns-remap, egress firewall - against the real engine and iptables, and names the
fix for what is missing."""

from __future__ import annotations

import asyncio
import pwd
import uuid

import pytest

from hivemind_worker.config import Settings
from hivemind_worker.doctor import DoctorContext, Outcome, run_doctor
from hivemind_worker.doctor.isolation import EGRESS, RUNTIME, TASK_USER
from hivemind_worker.runtime.egress import EgressFirewall, EgressPolicy

pytestmark = pytest.mark.docker


def doctor(settings: Settings, user: str = "root", **cache) -> dict:
    ctx = DoctorContext(settings=settings, timeout_s=10, user=user)
    ctx._cache.update(cache)
    results = asyncio.run(run_doctor(settings, context=ctx, checks=(TASK_USER, RUNTIME, EGRESS)))
    return {r.name: r for r in results}


def test_a_default_node(docker_client):
    results = doctor(Settings())
    assert results["task user"].outcome is Outcome.PASS and "65100:65100" in results["task user"].detail
    assert results["egress policy"].outcome is Outcome.PASS and "no network" in results["egress policy"].detail
    runtimes = docker_client.info()["Runtimes"]
    if not any("runsc" in r for r in runtimes):
        assert results["task runtime"].outcome is Outcome.WARN and "apt-get install runsc" in results["task runtime"].fix
    if "name=userns" not in " ".join(docker_client.info()["SecurityOptions"]):
        assert results["userns-remap"].outcome is Outcome.WARN and '"userns-remap"' in results["userns-remap"].fix


def test_a_task_user_that_is_a_host_account_fails():
    account = pwd.getpwall()[-1]
    result = doctor(Settings(task_user=f"{account.pw_uid}:{account.pw_gid}"))["task user"]
    assert result.outcome is Outcome.FAIL and account.pw_name in result.detail and "65100:65100" in result.fix


def test_an_unregistered_runtime_fails():
    result = doctor(Settings(task_runtime="hm-no-such-runtime"))["task runtime"]
    assert result.outcome is Outcome.FAIL and "not registered" in result.detail and "daemon.json" in result.fix


@pytest.mark.root
def test_egress_rules_missing_then_in_force():
    u = uuid.uuid4().hex[:6]
    fw = EgressFirewall(EgressPolicy(network=f"hm-egt-{u}", bridge=f"hmegt{u}", chain=f"HM-EGT-{u}"))
    settings = Settings(task_networks="none,bridge")
    try:
        missing = doctor(settings, **{"egress firewall": fw})["egress policy"]
        assert missing.outcome is Outcome.WARN and "not in force" in missing.detail and "CAP_NET_ADMIN" in missing.fix
        fw.ensure()
        ok = doctor(settings, **{"egress firewall": fw})["egress policy"]
        assert ok.outcome is Outcome.PASS and "metadata" in ok.detail
    finally:
        fw.remove()


def test_bridge_with_an_unprivileged_service_user_fails():
    result = doctor(Settings(task_networks="none,bridge"), user="nobody")["egress policy"]
    assert result.outcome is Outcome.FAIL and "cannot install the egress firewall" in result.detail
    assert 'task_networks = "none"' in result.fix
