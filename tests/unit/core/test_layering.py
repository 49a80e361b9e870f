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
    # control/ translates the wire to the task vocabulary (tasks.model) and knows no more of tasks.
    ("control", "agent"), ("control", "tasks.manager"), ("control", "tasks.runner"), ("control", "tasks.journal"),
    ("tasks", "agent"),
]

# Only control/ (the node's side) and devmaster/ (the test peer) speak protobuf.
WIRE_PACKAGES = ("control", "devmaster")
# Modules that still build or read protobuf outside them, each with why; remove an
# entry when its module moves its wire code into control/.
WIRE_ALLOWED: dict[str, str] = {}


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


def test_only_control_and_devmaster_speak_protobuf():
    offenders = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in (*WIRE_PACKAGES, "proto"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module == "hivemind_worker":
                names = [f"hivemind_worker.{a.name}" for a in node.names]
            if any(n == "hivemind_worker.proto" or n.startswith("hivemind_worker.proto.") for n in names):
                offenders.add(str(rel))
    unexpected = sorted(offenders - set(WIRE_ALLOWED))
    assert not unexpected, f"move the protobuf code of these into control/ (e.g. control/messages.py): {unexpected}"
    stale = sorted(set(WIRE_ALLOWED) - offenders)
    assert not stale, f"these no longer import the stubs: drop them from WIRE_ALLOWED: {stale}"
