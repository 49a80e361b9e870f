"""Words the container runtime and the task layer share, kept below both so that
runtime/ needs nothing from tasks/: which network a container gets, and which
stream a log line came from. tasks/model.py re-exports them with the rest of the
task vocabulary."""

from __future__ import annotations

import enum


class NetworkPolicy(str, enum.Enum):
    NONE = "none"
    BRIDGE = "bridge"


class LogStream(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"  # lines the worker adds, e.g. "[hivemind] dropped 12 MB of output"
