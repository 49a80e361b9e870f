"""DESIGN.md section 4's import rules, checked on the source: who may import whom."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "hivemind_worker"

# (importer, imported) pairs that must never occur. tasks.model is the shared task
# vocabulary, so the runtime and telemetry may use it without depending on the manager.
FORBIDDEN = [
    *[(core, "cli") for core in ("agent", "tasks", "runtime", "control", "telemetry", "monitor")],
    ("runtime", "control"), ("tasks", "control"),
    ("telemetry", "tasks.manager"), ("telemetry", "runtime"),
    ("monitor", "runtime"), ("monitor", "tasks.manager"),
    *[(daemon, "devmaster") for daemon in ("agent", "tasks", "runtime", "control", "telemetry", "monitor")],
    ("devmaster", "agent"), ("devmaster", "tasks.manager"), ("devmaster", "runtime"),
]


def imports_of(package: str) -> set[str]:
    found = set()
    for path in (PACKAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hivemind_worker."):
                found.add(node.module.removeprefix("hivemind_worker."))
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("hivemind_worker.") for a in node.names if a.name.startswith("hivemind_worker.")}
    return found


@pytest.mark.parametrize("importer, imported", FORBIDDEN, ids=lambda x: x)
def test_forbidden_import(importer, imported):
    bad = sorted(m for m in imports_of(importer) if m == imported or m.startswith(imported + "."))
    assert not bad, f"{importer} must not import {imported}: {bad}"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if "proto" not in p.parts and (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these (DESIGN.md: files under ~400 lines): {long}"
