"""The lower bounds in pyproject.toml are true: a fresh venv holding exactly the
oldest versions it allows installs the package and runs the demo end to end.

The constraints are read from pyproject.toml itself, so a bound cannot drift from
what is tested. The venv is cached per set of bounds (a fresh one takes ~40 s)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

CACHE = Path("/var/cache/hivemind-worker")


def lower_bounds() -> list[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dep)
        assert m, f"{dep!r}: every dependency needs a lower bound (name>=X)"
        pins.append(f"{m.group(1)}=={m.group(2)}")
    return pins


def test_every_dependency_has_a_lower_bound():
    assert len(lower_bounds()) >= 10


@pytest.mark.docker
def test_oldest_allowed_versions_run_the_demo(task_image, tmp_path):
    pins = lower_bounds()
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    venv = CACHE / f"minvenv-{key}"
    # A copy of the source: an in-tree build would leave build/ in the repo.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "test-artifacts", "build", "*.egg-info"))
    pip = str(venv / "bin" / "pip")
    if not (venv / "bin" / "hivemind-worker").exists():
        shutil.rmtree(venv, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        constraints = tmp_path / "min-constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        done = subprocess.run([pip, "install", "-q", "-c", str(constraints), str(src)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
        assert done.returncode == 0, done.stdout + done.stderr
    else:  # the cached venv keeps the old dependencies; the package is this tree's
        subprocess.run([pip, "install", "-q", "--no-deps", "--force-reinstall", str(src)],
                       check=True, capture_output=True, timeout=300)
    listed = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True).stdout.lower()
    for pin in pins:
        assert pin.lower().replace("_", "-") in listed.replace("_", "-"), f"{pin} not installed:\n{listed}"
    # Outside the repo, so the venv's copy of the package is the one imported.
    demo = subprocess.run([str(venv / "bin" / "hivemind-worker"), "demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "sum of squares below one million: 333332833333500000" in demo.stdout, demo.stdout
    where = re.search(r"Everything the demo made is in (\S+) ", demo.stdout)
    if where:
        shutil.rmtree(where.group(1), ignore_errors=True)
