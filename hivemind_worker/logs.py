"""Logging set-up: JSON lines under systemd (or when asked), readable text on a terminal.

Task id and node id travel as structured fields (``extra={"task_id": ...}``). A filter
redacts anything that looks like a credential or token before it is written, so a
careless ``logger.info("%s", request)`` cannot leak a secret into the journal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

_SECRET = re.compile(
    r"(?i)((?:token|credential|secret|private_?key|password|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"',}]+)"
)
_HM_TOKEN = re.compile(r"\bhm[tc]_[A-Za-z0-9_\-\.]{8,}")

FIELDS = ("task_id", "node_id")


def redact(text: str) -> str:
    text = _SECRET.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return _HM_TOKEN.sub("[REDACTED]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None))
        return f"{line} [{extra}]" if extra else line


def use_json(log_format: str, stream=None) -> bool:
    if log_format != "auto":
        return log_format == "json"
    # systemd sets JOURNAL_STREAM to the device:inode of the stream it gave us.
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str = "INFO", log_format: str = "auto", log_file: Path | None = None) -> None:
    """Configure the root logger once for a process (CLI entry points only)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if use_json(log_format) or log_file is not None and log_format == "json":
        # Loaded only for JSON lines (under systemd): a terminal or a test never needs it.
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # grpc and docker are chatty at DEBUG; our own debug is what an operator wants.
    for noisy in ("grpc", "docker", "urllib3", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
