"""DESIGN.md section 4's import rules, checked on the source: who may import whom."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "hivemind_worker"

# Shared by everything: configuration, the error tree, logging, addresses, the node's
# identity files, file helpers, the words the runtime and tasks share, and the signed
# usage record (the node signs it, a master verifies it).
BASE = {"config", "errors", "logs", "address", "identity", "fsutil", "vocab", "usage", "__version__"}

# DESIGN.md section 4's arrows (importer -> what it may import beyond BASE and itself).
# "tasks.model" is the task vocabulary: readable without depending on the task layer.
ALLOWED = {
    "cli": {"agent", "devmaster", "vpn", "systemd", "doctor",
            "hostsetup", "demo",  # host setup and the demo are CLI commands
            "monitor",  # `status`/`tasks` read the monitor's local status files
            "runtime"},  # `enroll` builds a runtime to gather the node's facts (a one-shot composition root)
    "agent": {"control", "tasks", "telemetry", "monitor", "vpn", "systemd"},
    "tasks": {"runtime"},
    "control": {"proto", "tasks.model"},
    "devmaster": {"proto", "control.channel"},  # the protocol's metadata keys, defined once
    "doctor": {"control", "runtime", "tasks.policy", "vpn", "systemd"},  # read-only checks of each part
    "monitor": {"telemetry", "tasks.model"},
    "telemetry": set(),
    "runtime": set(),
    "vpn": set(),
    "systemd": set(),
    "hostsetup": {"systemd"},
    "demo": set(),
    "__main__": {"cli"},
    "__init__": set(),
    **{base: set() for base in BASE - {"__version__"}},
}
# The composition root: agent/app.py picks the concrete runtime behind the task layer.
ALLOWED_FILES = {"agent/app.py": {"runtime"}}

CORE = ("agent", "tasks", "runtime", "control", "telemetry", "monitor")
# (importer, imported) pairs that must never occur: section 4's "Never" line.
FORBIDDEN = [
    *[(core, "cli") for core in CORE],
    ("runtime", "control"), ("tasks", "control"),  # tasks emit events, the agent routes them
    ("runtime", "tasks"),  # the runtime knows containers, not tasks
    ("telemetry", "tasks"), ("telemetry", "runtime"),  # telemetry steers nothing
    ("monitor", "runtime"), ("monitor", "tasks.manager"),  # the monitor touches no container
    *[(daemon, "devmaster") for daemon in CORE],
    ("devmaster", "agent"), ("devmaster", "tasks"), ("devmaster", "runtime"),
    ("control", "agent"), ("control", "tasks.manager"), ("control", "tasks.runner"), ("control", "tasks.journal"),
    ("tasks", "agent"),
]


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module == "hivemind_worker":
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hivemind_worker."):
        return [node.module.removeprefix("hivemind_worker.")]
    if isinstance(node, ast.Import):
        return [a.name.removeprefix("hivemind_worker.") for a in node.names if a.name.startswith("hivemind_worker.")]
    return []


def imports_by_file() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "proto":
            continue
        found[rel.as_posix()] = {m for node in ast.walk(ast.parse(path.read_text())) for m in _imported(node)}
    return found


def _owner(rel: str) -> str:
    return rel.split("/")[0] if "/" in rel else rel.removesuffix(".py")


def imports_of(package: str) -> set[str]:
    return {m for rel, mods in imports_by_file().items() if _owner(rel) == package for m in mods}


def _matches(module: str, rule: str) -> bool:
    return module == rule or module.startswith(rule + ".")


@pytest.mark.parametrize("importer, imported", FORBIDDEN, ids=lambda x: x)
def test_forbidden_import(importer, imported):
    bad = sorted(m for m in imports_of(importer) if _matches(m, imported))
    assert not bad, f"{importer} must not import {imported}: {bad}"


def test_every_import_follows_an_arrow():
    against = []
    for rel, modules in sorted(imports_by_file().items()):
        owner = _owner(rel)
        assert owner in ALLOWED, f"{rel}: new subsystem {owner!r}: add its arrows to ALLOWED (and DESIGN.md section 4)"
        rules = BASE | {owner} | ALLOWED[owner] | ALLOWED_FILES.get(rel, set())
        against += [f"{rel} -> {m}" for m in sorted(modules) if not any(_matches(m, r) for r in rules)]
    assert not against, f"imports against DESIGN.md section 4's arrows: {against}"


def test_allowed_and_forbidden_agree():
    clash = [(a, b) for a, b in FORBIDDEN for rule in ALLOWED.get(a, set()) if _matches(rule, b)]
    assert not clash, f"ALLOWED grants what FORBIDDEN forbids: {clash}"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if "proto" not in p.parts and (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these (DESIGN.md: files under ~400 lines): {long}"


# Only control/ (the node's side) and devmaster/ (the test peer) speak protobuf.
WIRE_PACKAGES = ("control", "devmaster")
# Modules that still build or read protobuf outside them, each with why; remove an
# entry when its module moves its wire code into control/.
WIRE_ALLOWED: dict[str, str] = {}


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
