"""The doctor's vocabulary: outcomes, one result line, the context checks read.

Results pass through the log redactor on the way out, so a check that quotes a
config line can never print a credential or a key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hivemind_worker.config import Settings
from hivemind_worker.logs import redact
from hivemind_worker.systemd.unit import DEFAULT_USER

GiB = 1024**3


class Outcome(enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Outcome
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.outcome.value}  {self.name}: {redact(self.detail)}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "outcome": self.outcome.value, "detail": redact(self.detail),
                "fix": redact(self.fix) if self.outcome is not Outcome.PASS else ""}


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Outcome.PASS, detail)


def warned(name: str, detail: str, fix: str = "") -> CheckResult:
    return CheckResult(name, Outcome.WARN, detail, fix)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, Outcome.FAIL, detail, fix)


@dataclass
class DoctorContext:
    """What the checks read. Tests swap the seams (``nvml``, paths, thresholds)."""

    settings: Settings
    user: str = DEFAULT_USER
    timeout_s: float = 5.0
    config_error: str | None = None  # the settings could not be loaded (defaults used)
    nvml: Any = None  # a pynvml-like module; None = import pynvml
    min_free_bytes: int = 2 * GiB
    warn_free_bytes: int = 10 * GiB
    handshake_max_age_s: float = 180.0  # WireGuard re-handshakes every 2 minutes
    unit_dirs: tuple[Path, ...] = (
        Path("/etc/systemd/system"), Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"),
    )
    docker_root: Path = Path("/var/lib/docker")
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@dataclass(frozen=True)
class Check:
    """A group of result lines made by one bounded function."""

    names: tuple[str, ...]
    run: Callable[[DoctorContext], list[CheckResult]]
    timeout_fix: str
