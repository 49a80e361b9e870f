"""Telemetry reports for the session, built from the telemetry subsystem's samples."""

from __future__ import annotations

from typing import Any, Mapping

from hivemind_worker.proto import worker_pb2 as pb


def report_from_sample(sample: Mapping[str, Any]) -> pb.TelemetryReport:
    """``sample`` is a flat mapping as produced by the telemetry collectors."""
    report = pb.TelemetryReport(
        time_ms=int(sample.get("time_ms", 0)),
        cpu_percent=float(sample.get("cpu_percent", 0.0)),
        memory_percent=float(sample.get("memory_percent", 0.0)),
        memory_used_bytes=int(sample.get("memory_used_bytes", 0)),
        memory_total_bytes=int(sample.get("memory_total_bytes", 0)),
        gpu_percent=float(sample.get("gpu_percent", 0.0)),
        load1=float(sample.get("load1", 0.0)),
        disk_free_bytes=int(sample.get("disk_free_bytes", 0)),
    )
    for gpu in sample.get("gpus", ()):
        report.gpus.add(
            index=int(gpu.get("index", 0)),
            uuid=str(gpu.get("uuid", "")),
            name=str(gpu.get("name", "")),
            utilization_percent=float(gpu.get("utilization_percent", 0.0)),
            memory_used_bytes=int(gpu.get("memory_used_bytes", 0)),
            memory_total_bytes=int(gpu.get("memory_total_bytes", 0)),
            temperature_c=float(gpu.get("temperature_c", 0.0)),
            power_w=float(gpu.get("power_w", 0.0)),
        )
    for task in sample.get("tasks", ()):
        report.tasks.add(
            task_id=str(task.get("task_id", "")),
            cpu_percent=float(task.get("cpu_percent", 0.0)),
            memory_bytes=int(task.get("memory_bytes", 0)),
            read_bytes=int(task.get("read_bytes", 0)),
            write_bytes=int(task.get("write_bytes", 0)),
        )
    reward = sample.get("reward")
    if reward:
        report.reward.report = int(reward.get("report", 0))
        report.reward.today = int(reward.get("today", 0))
        report.reward.total = int(reward.get("total", 0))
    return report
