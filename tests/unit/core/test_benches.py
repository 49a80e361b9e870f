"""The benches are not run by the suite (they measure, they do not assert), but they
must keep importing as the code under them changes."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # benches import their shared stack.py
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__, f"{path.name}: say what it measures and how to run it"
    sys.modules.pop(f"bench_{path.stem}", None)
