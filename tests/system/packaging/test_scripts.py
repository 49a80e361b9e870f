"""Fast checks of the packaging scripts that need no booted host: argument errors
read well and exit non-zero, and shellcheck finds nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = ["install.sh", "scripts/build-deb.sh", "packaging/debian/postinst", "packaging/debian/prerm",
           "packaging/debian/postrm"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "install.sh"), *args], capture_output=True, text=True, timeout=30)


def test_install_sh_help():
    done = run("--help")
    assert done.returncode == 0 and "--uninstall" in done.stdout and "--wheelhouse" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option: --bogus"),
    (["--purge"], "--purge goes with --uninstall"),
    (["--token", "t"], "enrolling needs all of --master"),
    (["--wheelhouse", "/nonexistent"], "--wheelhouse /nonexistent: no such directory"),
])
def test_install_sh_refuses_bad_arguments(args, message):
    done = run(*args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("needs shellcheck: apt-get install shellcheck")
    done = subprocess.run(["shellcheck", *SCRIPTS], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
