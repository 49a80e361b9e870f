"""The host's CPU package energy from RAPL, through the kernel's powercap files.

``/sys/class/powercap/intel-rapl:<n>/energy_uj`` is a cumulative counter per CPU
package (AMD's RAPL shows there too); it wraps at ``max_energy_range_uj``. Only the
top-level package domains are read: their sub-domains (core, uncore, dram) and the
platform domain ("psys") overlap them and would count energy twice.

The figure is the whole host's, not one task's: the machine has no per-process
energy meter. Where nothing is readable (no RAPL, a VM, energy_uj being root-only
since the Platypus fix and the agent not root) the reading is empty and the figure
is left out, never guessed. Blocking file reads: call from a worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
_PACKAGE_DIR = re.compile(r"^intel-rapl:\d+$")


@dataclass(frozen=True)
class EnergyCounter:
    domain: str  # e.g. "intel-rapl:0"
    energy_uj: int
    max_range_uj: int  # where the counter wraps to 0


def read_packages(root: Path = POWERCAP) -> list[EnergyCounter]:
    """Every readable package domain's counter; [] where there is none. An unreadable
    domain is skipped: a partial sum would be a guess, so callers should compare the
    domains they got with those they had (``delta_uj``)."""
    found = []
    try:
        entries = sorted(p for p in root.iterdir() if _PACKAGE_DIR.match(p.name))
    except OSError:
        return []
    for d in entries:
        try:
            if not (d / "name").read_text().strip().startswith("package"):
                continue
            found.append(EnergyCounter(d.name, int((d / "energy_uj").read_text()),
                                       int((d / "max_energy_range_uj").read_text())))
        except (OSError, ValueError):
            continue
    return found


def delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Energy between two readings of one counter that may have wrapped once."""
    return after - before if after >= before else after + max_range_uj - before
