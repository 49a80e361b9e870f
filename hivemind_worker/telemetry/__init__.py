"""Telemetry: host, GPU and per-task samples, their 24 h history, rewards and the
Prometheus view of the node.

Computed on demand and degrading (a missing source gives fewer fields and one
warning). This package reads; it never steers tasks or containers.
"""
