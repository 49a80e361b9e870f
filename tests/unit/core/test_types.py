"""The type checker over the package and the hand-written fakes ([tool.mypy] in
pyproject.toml): the seams are Protocols (runtime/api.py, tasks/model.py), so a fake
that drifts from the real thing, or a caller that drifts from the seam, fails here."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_mypy_passes():
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, f"mypy found type errors:\n{run.stdout}{run.stderr}"
