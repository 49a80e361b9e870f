"""Fast checks of the packaging scripts that need no booted host: argument errors
read well and exit non-zero, and shellcheck finds nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = ["install.sh", "scripts/build-deb.sh", "packaging/debian/postinst", "packaging/debian/prerm",
           "packaging/debian/postrm", "scripts/build-apt-repo.sh", "scripts/build-test-rootfs.sh"]


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


def test_build_apt_repo_refuses_what_it_cannot_place(tmp_path):
    """A .deb that names no release, or a signer without a key, stops the build with why."""
    if not shutil.which("reprepro") or not shutil.which("gpg") or not shutil.which("dpkg-deb"):
        pytest.skip("needs reprepro, gnupg and dpkg-deb (scripts/install-test-deps.sh)")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: hivemind-worker\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: t <t@example.invalid>\nDescription: test\n")
    deb = tmp_path / "plain.deb"
    subprocess.run(["dpkg-deb", "-b", str(pkg), str(deb)], check=True, capture_output=True, timeout=60)
    script = str(REPO / "scripts" / "build-apt-repo.sh")
    done = subprocess.run(["bash", script, "--out", str(tmp_path / "repo"), "--gnupghome", str(tmp_path / "keys"), str(deb)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no secret key" in done.stderr, done.stderr
    done = subprocess.run(["bash", script, "--out", str(tmp_path / "repo"), "--gnupghome", str(tmp_path / "keys"),
                           "--new-key", str(deb)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "names no release" in done.stderr, done.stderr
