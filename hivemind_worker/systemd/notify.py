"""The one place that speaks sd_notify (via ``sdnotify``).

``Notifier`` is the seam the daemon gets injected: ``SystemdNotifier`` for real
(a no-op when NOTIFY_SOCKET is unset, i.e. outside systemd), ``FakeNotifier`` for
tests. The daemon decides health: it calls ``watchdog()`` only while its loop and
subsystems are healthy, so a wedged loop makes systemd restart it. This module
must not decide anything itself, and must never raise into the caller.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import sdnotify

logger = logging.getLogger(__name__)


class Notifier(Protocol):
    def ready(self, status: str | None = None) -> None: ...
    def status(self, text: str) -> None: ...
    def watchdog(self) -> None: ...
    def reloading(self) -> None: ...
    def stopping(self, status: str | None = None) -> None: ...
    def extend_timeout(self, seconds: float) -> None: ...


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return " ".join(text.split())


def _extend_line(seconds: float) -> str:
    # systemd >= 236 (older ones ignore it): the service must send again within this
    # window or be timed out, but only once the state (here: stopping) has lasted
    # longer than its configured timeout (TimeoutStopSec=), which it never shortens.
    return f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}"


class SystemdNotifier:
    """sd_notify through ``sdnotify.SystemdNotifier``; silent outside systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None

    def _send(self, *lines: str) -> None:
        if self._sd is None:
            return
        message = "\n".join(lines)
        logger.debug("sd_notify %s", message.replace("\n", " "))
        self._sd.notify(message)

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> None:
        self._send(_extend_line(seconds))


class FakeNotifier:
    """Records what would have been sent, as sd_notify lines, for tests."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str | None = None) -> None:
        self.sent.append("READY=1")
        if status:
            self.sent.append(f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        self.sent.append(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self.sent.append("WATCHDOG=1")

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")

    def stopping(self, status: str | None = None) -> None:
        self.sent.append("STOPPING=1")
        if status:
            self.sent.append(f"STATUS={_one_line(status)}")

    def extend_timeout(self, seconds: float) -> None:
        self.sent.append(_extend_line(seconds))

    @property
    def statuses(self) -> list[str]:
        return [line[len("STATUS="):] for line in self.sent if line.startswith("STATUS=")]


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when systemd
    asked for none, or asked another process (WATCHDOG_PID is not ours)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
