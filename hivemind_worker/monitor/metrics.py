"""Prometheus metrics of the node, computed at scrape time from a ``NodeView``.

Names follow node_exporter (``hivemind_node_*``, base units in the name) and NVIDIA's
DCGM exporter (``hivemind_gpu_*`` with ``gpu`` and ``uuid`` labels), plus the agent's
own ``hivemind_agent_*``. A custom Collector on its own CollectorRegistry: no global
registry, nothing measured twice, and a failing section is skipped (logged once)
rather than failing the scrape.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hivemind_worker.monitor.view import SESSION_STATES, NodeView, tasks_by_state
from hivemind_worker.tasks.model import TaskStatus
from hivemind_worker.telemetry.degrade import WarnOnce

logger = logging.getLogger(__name__)


def _gauge(name: str, doc: str, value: Any, labels: dict[str, str] | None = None) -> GaugeMetricFamily | None:
    if value is None:
        return None
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), float(value))
    return g


def _counter(name: str, doc: str, value: Any) -> CounterMetricFamily | None:
    if value is None:
        return None
    return CounterMetricFamily(name, doc, value=float(value))


def _ratio(percent: Any) -> float | None:
    return None if percent is None else float(percent) / 100.0


class NodeMetricsCollector(Collector):
    def __init__(self, view: NodeView) -> None:
        self._view = view
        self._warn = WarnOnce(logger)

    def collect(self) -> Iterator[Metric]:
        for name, section in (("agent", self._agent), ("host", self._host), ("gpu", self._gpu),
                              ("tasks", self._tasks)):
            try:
                metrics = list(section())
            except Exception as exc:  # a scrape must not fail because one part of the view did
                self._warn(name, "metrics: %s section failed (%s); skipped", name, exc)
                continue
            yield from (m for m in metrics if m is not None)

    def _agent(self) -> Iterable[Metric | None]:
        v = self._view
        status, counters, earnings = v.status(), v.agent_counters(), v.earnings()
        info = GaugeMetricFamily("hivemind_agent_info", "Agent version and node id (always 1).",
                                 labels=["version", "node_id"])
        info.add_metric([str(status.get("version", "")), str(status.get("node_id") or "")], 1)
        yield info
        yield _gauge("hivemind_agent_enrolled", "1 when the node holds an identity from a master.",
                     int(bool(status.get("enrolled"))))
        yield _gauge("hivemind_agent_start_time_seconds", "When the agent started (Unix time).",
                     (status.get("started_ms") or 0) / 1000 or None)
        yield _gauge("hivemind_agent_draining", "1 while the node takes no new tasks.", int(bool(status.get("draining"))))
        session = status.get("session") or {}
        state = session.get("state", "closed")
        fam = GaugeMetricFamily("hivemind_agent_session_state", "Session with the master (1 = current state).",
                                labels=["state"])
        for s in SESSION_STATES if state in SESSION_STATES else (*SESSION_STATES, state):
            fam.add_metric([s], 1 if s == state else 0)
        yield fam
        yield _gauge("hivemind_agent_session_connected", "1 while the session stream is up.",
                     int(bool(session.get("connected"))))
        yield _counter("hivemind_agent_reconnects", "Session reconnections since start.",
                       counters.get("reconnects_total"))
        yield _counter("hivemind_agent_log_lines_sent", "Task log lines sent to the master.",
                       counters.get("log_lines_sent_total"))
        yield _counter("hivemind_agent_log_bytes_sent", "Task log bytes sent to the master.",
                       counters.get("log_bytes_sent_total"))
        yield _counter("hivemind_agent_telemetry_reports", "Telemetry reports sent.",
                       counters.get("telemetry_reports_total"))
        yield _gauge("hivemind_agent_results_spooled", "Result archives kept until the master acknowledges them.",
                     counters.get("results_spooled"))
        by_state = {**{s.value: 0 for s in TaskStatus}, **tasks_by_state(v.tasks())}  # every state, 0 included
        tasks = GaugeMetricFamily("hivemind_agent_tasks", "Tasks held by the node, by state.", labels=["state"])
        for s, n in by_state.items():
            tasks.add_metric([s], n)
        yield tasks
        yield _counter("hivemind_agent_reward", "Rewards earned in total (platform formula).", earnings.get("total"))
        yield _gauge("hivemind_agent_reward_today", "Rewards earned today (UTC).", earnings.get("today"))
        yield _gauge("hivemind_agent_last_reward", "Reward of the last telemetry report.", earnings.get("last_reward"))
        vpn = status.get("vpn") or {}
        yield _gauge("hivemind_vpn_up", "1 when the WireGuard interface is up.", int(bool(vpn.get("up"))))
        hs = vpn.get("latest_handshake_ms")
        yield _gauge("hivemind_vpn_latest_handshake_timestamp_seconds", "Last WireGuard handshake (Unix time).",
                     hs / 1000 if hs else None)
        docker = status.get("docker") or {}
        yield _gauge("hivemind_docker_up", "1 when the Docker engine answers.", int(bool(docker.get("available"))))

    def _host(self) -> Iterable[Metric | None]:
        sample = self._view.latest_sample()
        if not sample:
            return
        h = sample["host"]
        yield _gauge("hivemind_telemetry_sample_timestamp_seconds", "When the last sample was taken (Unix time).",
                     sample["time_ms"] / 1000)
        yield _gauge("hivemind_node_cpus", "Logical CPUs.", h.get("cpu_count"))
        yield _gauge("hivemind_node_cpu_usage_ratio", "Busy share of all CPUs (0-1).", _ratio(h.get("cpu_percent")))
        if h.get("cpu_per_core_percent"):
            core = GaugeMetricFamily("hivemind_node_cpu_core_usage_ratio", "Busy share per logical CPU (0-1).",
                                     labels=["cpu"])
            for i, pct in enumerate(h["cpu_per_core_percent"]):
                core.add_metric([str(i)], pct / 100.0)
            yield core
        for minutes in (1, 5, 15):
            yield _gauge(f"hivemind_node_load{minutes}", f"{minutes}-minute load average.", h.get(f"load_{minutes}m"))
        for key, doc in (("memory_total_bytes", "Physical memory."), ("memory_available_bytes", "Memory available."),
                         ("memory_used_bytes", "Memory in use (total - available)."),
                         ("swap_total_bytes", "Swap space."), ("swap_used_bytes", "Swap in use.")):
            yield _gauge(f"hivemind_node_{key}", doc, h.get(key))
        if h.get("disks"):
            fams = {k: GaugeMetricFamily(f"hivemind_node_filesystem_{k}_bytes", doc, labels=["volume", "path"])
                    for k, doc in (("size", "Filesystem size."), ("avail", "Filesystem space free."),
                                   ("used", "Filesystem space used."))}
            for d in h["disks"]:
                labels = [d["name"], d["path"]]
                fams["size"].add_metric(labels, d["total_bytes"])
                fams["avail"].add_metric(labels, d["free_bytes"])
                fams["used"].add_metric(labels, d["used_bytes"])
            yield from fams.values()
        net = h.get("net")
        if net:
            for key, name in (("bytes_sent", "transmit_bytes"), ("bytes_recv", "receive_bytes"),
                              ("packets_sent", "transmit_packets"), ("packets_recv", "receive_packets")):
                yield _counter(f"hivemind_node_network_{name}", f"Network {name.replace('_', ' ')} (all but loopback).",
                               net[key])

    def _gpu(self) -> Iterable[Metric | None]:
        sample = self._view.latest_sample()
        if not sample:
            return
        gpus = sample.get("gpus") or []
        yield _gauge("hivemind_gpus", "GPUs NVML sees.", len(gpus))
        if not gpus:
            return
        labels = ["gpu", "uuid"]
        info = GaugeMetricFamily("hivemind_gpu_info", "GPU model and driver (always 1).",
                                 labels=[*labels, "name", "driver_version"])
        specs = (
            ("utilization_ratio", "GPU busy share (0-1), as DCGM_FI_DEV_GPU_UTIL.", "utilization_percent", _ratio),
            ("memory_utilization_ratio", "Memory controller busy share (0-1).", "memory_utilization_percent", _ratio),
            ("memory_used_bytes", "Framebuffer memory in use.", "memory_used_bytes", None),
            ("memory_total_bytes", "Framebuffer memory.", "memory_total_bytes", None),
            ("temperature_celsius", "GPU temperature.", "temperature_c", None),
            ("power_watts", "Power draw.", "power_w", None),
            ("power_limit_watts", "Enforced power limit.", "power_limit_w", None),
        )
        fams = {s[0]: GaugeMetricFamily(f"hivemind_gpu_{s[0]}", s[1], labels=labels) for s in specs}
        procs = GaugeMetricFamily("hivemind_gpu_processes", "Compute processes on the GPU.", labels=labels)
        for g in gpus:
            lv = [str(g["index"]), g["uuid"]]
            info.add_metric([*lv, g["name"], sample.get("gpu_driver_version") or ""], 1)
            procs.add_metric(lv, len(g.get("processes") or ()))
            for name, _, key, conv in specs:
                value = g.get(key)
                if value is not None and conv:
                    value = conv(value)
                if value is not None:
                    fams[name].add_metric(lv, value)
        yield info
        yield procs
        yield from (f for f in fams.values() if f.samples)

    def _tasks(self) -> Iterable[Metric | None]:
        sample = self._view.latest_sample()
        tasks = (sample or {}).get("tasks") or []
        if not tasks:
            return
        specs = (
            ("hivemind_task_cpu_usage_ratio", GaugeMetricFamily, "CPU used as a share of one core (1 = one full core; above 1 on several cores).",
             "cpu_percent", _ratio),
            ("hivemind_task_cpu_seconds", CounterMetricFamily, "CPU time used by the task's container.",
             "cpu_seconds_total", None),
            ("hivemind_task_memory_bytes", GaugeMetricFamily, "Working set of the task's container.", "memory_bytes", None),
            ("hivemind_task_memory_limit_bytes", GaugeMetricFamily, "Memory limit of the task's container.",
             "memory_limit_bytes", None),
            ("hivemind_task_io_read_bytes", CounterMetricFamily, "Block I/O read.", "io_read_bytes", None),
            ("hivemind_task_io_write_bytes", CounterMetricFamily, "Block I/O written.", "io_write_bytes", None),
            ("hivemind_task_gpu_memory_used_bytes", GaugeMetricFamily, "GPU memory used by the task's processes.",
             "gpu_memory_bytes", None),
        )
        for name, kind, doc, key, conv in specs:
            fam = kind(name, doc, labels=["task_id"])
            for t in tasks:
                value = t.get(key)
                if value is not None and conv:
                    value = conv(value)
                if value is not None:
                    fam.add_metric([t["task_id"]], value)
            if fam.samples:
                yield fam


def build_registry(view: NodeView, process_metrics: bool = True) -> CollectorRegistry:
    """A registry of this node's metrics (plus the agent process's own, process_*)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetricsCollector(view))
    if process_metrics:
        ProcessCollector(registry=registry)
    return registry
