"""Fast checks of the packaging scripts that need no booted host: argument errors
read well and exit non-zero, and shellcheck finds nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def _prerm_drain_wait(python: str, config_dir: Path, path: str | None = None) -> str:
    """prerm's drain_wait_s, run on its own against a config directory (``path``: a
    PATH to find ``systemctl`` on)."""
    text = (REPO / "packaging" / "debian" / "prerm").read_text()
    func = re.search(r"^drain_wait_s\(\) \{\n.*?^\}\n", text, re.M | re.S)
    assert func, "packaging/debian/prerm has no drain_wait_s()"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    done = subprocess.run(["sh", "-c", func.group(0) + 'drain_wait_s "$0"', python], capture_output=True,
                          text=True, timeout=60, env={**env, "HIVEMIND_CONFIG_DIR": str(config_dir),
                                                      **({"PATH": path} if path else {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_prerm_waits_for_the_configured_drain(tmp_path):
    """A removal waits drain_timeout_s (worker.toml) plus the unit's stop margin, so a
    long drain is not cut short; without a readable setting, the old 150 s."""
    from hivemind_worker.systemd.unit import DRAIN_MARGIN_S

    python = sys.executable  # the worker's own interpreter in the test venv
    assert _prerm_drain_wait(python, tmp_path) == str(60 + DRAIN_MARGIN_S)  # the default
    (tmp_path / "worker.toml").write_text("stop_mode = \"drain\"\ndrain_timeout_s = 600.5\n")
    assert _prerm_drain_wait(python, tmp_path) == str(601 + DRAIN_MARGIN_S)
    (tmp_path / "worker.toml").write_text("drain_timeout_s = \n")  # broken: not TOML
    assert _prerm_drain_wait(python, tmp_path) == "150"
    assert _prerm_drain_wait(str(tmp_path / "no-python"), tmp_path) == "150"


def test_prerm_reads_the_units_environment(tmp_path):
    """The service's settings come from worker.toml and then the unit's Environment=
    (a drop-in's HIVEMIND_DRAIN_TIMEOUT_S): prerm waits for what the service will do.
    Here ``systemctl`` prints what `systemctl show -P Environment` prints; the real one
    is asked in tests/system/host/test_stop_timeout.py."""
    from hivemind_worker.systemd.unit import DRAIN_MARGIN_S

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shown = tmp_path / "environment"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\n[ "$*" = "show -P Environment hivemind-worker.service" ] '
                                       f'&& exec cat {shown}\nexit 1\n')
    (bin_dir / "systemctl").chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    (tmp_path / "worker.toml").write_text("drain_timeout_s = 100\n")
    shown.write_text('PYTHONUNBUFFERED=1 "GREETING=a b" HIVEMIND_DRAIN_TIMEOUT_S=240\n')
    assert _prerm_drain_wait(sys.executable, tmp_path, path) == str(240 + DRAIN_MARGIN_S)
    shown.write_text("PYTHONUNBUFFERED=1\n")  # no override: worker.toml's
    assert _prerm_drain_wait(sys.executable, tmp_path, path) == str(100 + DRAIN_MARGIN_S)
    shown.write_text("HIVEMIND_DRAIN_TIMEOUT_S=soon\n")  # the service would not start either
    assert _prerm_drain_wait(sys.executable, tmp_path, path) == "150"


def test_install_sh_uninstall_reads_the_units_environment(tmp_path):
    """install.sh --uninstall waits as prerm does (drain_service, run on its own; the
    stand-in systemctl answers for an active unit whose agent exits at once)."""
    from hivemind_worker.systemd.unit import DRAIN_MARGIN_S

    func = re.search(r"^drain_service\(\) \{\n.*?^\}\n", (REPO / "install.sh").read_text(), re.M | re.S)
    assert func, "install.sh has no drain_service()"
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "systemctl").write_text(
        '#!/bin/sh\ncase "$*" in\n'
        '  "show -P Environment hivemind-worker.service") echo "PYTHONUNBUFFERED=1 HIVEMIND_DRAIN_TIMEOUT_S=240" ;;\n'
        '  "show -P MainPID hivemind-worker.service") echo 0 ;;\n'
        '  "is-active --quiet hivemind-worker.service"|"kill --kill-whom=main --signal=SIGINT hivemind-worker.service") ;;\n'
        '  *) exit 1 ;;\nesac\n')
    (tmp_path / "bin" / "systemctl").chmod(0o755)
    (tmp_path / "worker.toml").write_text("drain_timeout_s = 100\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    script = f'UNIT=hivemind-worker.service VENV={tmp_path / "venv"}\nsay() {{ echo "$*"; }}\n{func.group(0)}drain_service\n'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**env, "HIVEMIND_CONFIG_DIR": str(tmp_path), "PATH": f"{tmp_path / 'bin'}:{env['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert f"(at most {240 + DRAIN_MARGIN_S} s)" in done.stdout, done.stdout
