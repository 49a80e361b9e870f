"""/metrics on a live monitor: real `promtool check metrics` and the expected names."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families



def _promtool(text: str) -> subprocess.CompletedProcess:
    if not shutil.which("promtool"):
        pytest.skip("needs promtool (apt-get install -y prometheus)")
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


def _scrape(url: str) -> tuple[str, dict]:
    r = httpx.get(url + "/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return r.text, samples


def test_promtool_accepts_live_metrics_with_gpus_and_tasks(live_monitor, fake_view):
    fake_view.backfill(minutes=3)
    fake_view.start_task("task-m")
    fake_view.log("task-m", "x" * 10)
    text, samples = _scrape(live_monitor.url)
    result = _promtool(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", "promtool lint warnings: " + result.stdout + result.stderr

    gpu = (("gpu", "0"), ("uuid", "GPU-5f1c2a9e-7d3b-4e1f-9a0c-2b8d6e4f1a37"))
    assert 0 <= samples[("hivemind_gpu_utilization_ratio", gpu)] <= 1
    assert samples[("hivemind_gpu_memory_total_bytes", gpu)] == 40 * 2**30
    assert samples[("hivemind_gpu_power_watts", gpu)] == pytest.approx(312.417)
    assert samples[("hivemind_gpu_processes", gpu)] == 1
    assert 0 <= samples[("hivemind_node_cpu_usage_ratio", ())] <= 1
    assert samples[("hivemind_node_memory_total_bytes", ())] > 0
    assert ("hivemind_node_filesystem_size_bytes", (("path", "/var/lib/docker"), ("volume", "docker"))) in samples
    assert samples[("hivemind_agent_session_state", (("state", "connected"),))] == 1
    assert samples[("hivemind_agent_session_state", (("state", "backoff"),))] == 0
    assert samples[("hivemind_agent_reconnects_total", ())] == 1
    assert samples[("hivemind_agent_tasks", (("state", "running"),))] == 1
    assert samples[("hivemind_agent_tasks", (("state", "done"),))] == 0
    assert samples[("hivemind_agent_log_lines_sent_total", ())] == 1
    assert samples[("hivemind_agent_log_bytes_sent_total", ())] == 10
    assert samples[("hivemind_agent_results_spooled", ())] == 0
    assert samples[("hivemind_agent_reward_total", ())] == fake_view.earnings()["total"] > 0
    assert samples[("hivemind_agent_telemetry_reports_total", ())] == 3
    assert ("process_resident_memory_bytes", ()) in samples


def test_promtool_accepts_metrics_before_any_sample_and_without_gpus(view_factory, server_factory):
    view = view_factory("nvml_failing.json")
    server = server_factory(view)
    text, samples = _scrape(server.url)  # no sample yet: agent metrics only
    assert _promtool(text).returncode == 0
    assert not any(name.startswith("hivemind_node_") for name, _ in samples)
    view.report()
    text, samples = _scrape(server.url)
    result = _promtool(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert samples[("hivemind_gpus", ())] == 0
    assert not any(name.startswith("hivemind_gpu_") for name, _ in samples)


def test_a_failing_view_section_does_not_fail_the_scrape(view_factory, server_factory, caplog):
    view = view_factory()
    view.report()

    def broken():
        raise RuntimeError("journal locked")

    view.agent_counters = broken
    server = server_factory(view)
    for _ in range(3):
        text, samples = _scrape(server.url)
    assert ("hivemind_node_cpu_usage_ratio", ()) in samples
    assert ("hivemind_agent_reconnects_total", ()) not in samples
    assert sum("agent section failed" in r.getMessage() for r in caplog.records) == 1


def test_promtool_accepts_four_gpus_one_without_power(view_factory, server_factory):
    view = view_factory("gpus4.json")
    view.report()
    server = server_factory(view)
    text, samples = _scrape(server.url)
    result = _promtool(text)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    util = {k[1][0][1]: v for k, v in samples.items() if k[0] == "hivemind_gpu_utilization_ratio"}
    power = {k[1][0][1] for k in samples if k[0] == "hivemind_gpu_power_watts"}
    assert sorted(util) == ["0", "1", "2", "3"] and power == {"0", "1", "2"}
    assert samples[("hivemind_gpus", ())] == 4
