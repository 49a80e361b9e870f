"""Docker's RFC 3339 times (UTC, up to nanoseconds) as epoch milliseconds."""

from __future__ import annotations

import calendar
import time


def docker_time_ms(stamp: str) -> int:
    """Docker's RFC 3339 time (UTC, up to nanoseconds) -> epoch milliseconds; the one
    parser of it (log lines in logstream.py, container start times in engine_probe.py).
    ValueError when it is not one."""
    head, _, rest = stamp.partition(".")
    seconds = calendar.timegm(time.strptime(head.rstrip("Z"), "%Y-%m-%dT%H:%M:%S"))
    digits = "".join(c for c in rest[:3] if c.isdigit())
    return seconds * 1000 + (int(digits.ljust(3, "0")) if digits else 0)


class StampClock:
    """RFC 3339 (Docker's fixed nanosecond form, UTC) -> epoch milliseconds, with
    the seconds part cached: consecutive lines almost always share it."""

    def __init__(self) -> None:
        self._head = b""
        self._epoch_ms = 0

    def ms(self, stamp: bytes) -> int:
        head = stamp[:19]
        if head != self._head:
            try:
                self._epoch_ms = docker_time_ms(head.decode())
            except ValueError:
                return int(time.time() * 1000)
            self._head = head
        frac = stamp[20:23] if stamp[19:20] == b"." else b""
        digits = bytes(c for c in frac if 48 <= c <= 57)
        return self._epoch_ms + (int(digits.ljust(3, b"0")) if digits else 0)
