"""Root-run commands trust nothing the service user can write: `up` refuses a
wg0.conf that would make wg-quick run commands (before wg-quick runs), or one
someone else could change; `install` never follows a symlink when it chowns or
chmods; `drain` signals only a real hivemind-worker daemon. Real files, links and
processes in temporary directories."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hivemind_worker.errors import HostError
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.hostsetup.install import InstallReport, secure_config_dir, share_with_service
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.systemd.pidfile import pid_path, signal_daemon
from hivemind_worker.vpn.config import render_wg_conf
from hivemind_worker.vpn.keys import generate_keypair
from tests.conftest import cli

pytestmark = pytest.mark.root
NOBODY = 65534
HUB = generate_keypair()
VPN = VpnAssignment("10.88.0.2/32", HUB.public_key, "192.0.2.1:51820", ("10.88.0.0/24",))


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _up(tmp_path: Path, conf_text: str | None, **env) -> tuple[subprocess.CompletedProcess, Path]:
    """`hivemind-worker up` with a wg-quick on PATH that only records that it ran."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    conf = etc / "wg0.conf"
    if conf_text is not None:
        atomic_write(conf, conf_text, 0o600)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    ran = tmp_path / "wg-quick-ran"
    (bin_dir / "wg-quick").write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\n")
    (bin_dir / "wg-quick").chmod(0o755)
    done = cli("up", "--handshake-timeout", "1", timeout=30,
               env={"HIVEMIND_CONFIG_DIR": str(etc), "HIVEMIND_STATE_DIR": str(tmp_path / "state"),
                    "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
    return done, ran


@pytest.mark.parametrize(("line", "reason"), [
    ("PostUp = touch {pwned}", "PostUp: refused: wg-quick runs it as a command as root"),
    ("PreUp = touch {pwned}", "PreUp: refused"),
    ("DNS = 10.88.0.1", "rewrite the host's resolver"),
])
def test_up_refuses_before_wg_quick_runs(tmp_path, line, reason):
    pwned = tmp_path / "pwned"
    text = render_wg_conf(generate_keypair().private_key, VPN).replace(
        "[Peer]", line.format(pwned=pwned) + "\n\n[Peer]")
    done, ran = _up(tmp_path, text)
    assert done.returncode != 0
    assert reason in done.stderr, done.stderr
    assert not ran.exists() and not pwned.exists()  # up returned before calling wg-quick


def test_up_refuses_full_tunnel_unless_allowed(tmp_path):
    text = render_wg_conf(generate_keypair().private_key, VPN).replace("AllowedIPs = 10.88.0.0/24", "AllowedIPs = 0.0.0.0/0")
    done, ran = _up(tmp_path, text)
    assert done.returncode != 0 and "vpn_allow_full_tunnel = true" in done.stderr, done.stderr
    assert not ran.exists()


def test_up_refuses_a_conf_someone_else_can_write(tmp_path):
    text = render_wg_conf(generate_keypair().private_key, VPN)
    etc = tmp_path / "etc"
    etc.mkdir()
    atomic_write(etc / "wg0.conf", text, 0o600)
    os.chown(etc / "wg0.conf", NOBODY, NOBODY)
    done, ran = _up(tmp_path, None)
    assert done.returncode != 0 and "owned by uid 65534" in done.stderr and "chown root:" in done.stderr, done.stderr
    assert not ran.exists()

    os.chown(etc / "wg0.conf", 0, 0)
    os.chown(etc, NOBODY, NOBODY)  # the file is root's, but its directory is not: it could be swapped
    done, ran = _up(tmp_path, None)
    assert done.returncode != 0 and "could be swapped under wg-quick" in done.stderr, done.stderr
    assert not ran.exists()


def test_up_refuses_a_symlinked_conf(tmp_path):
    real = tmp_path / "real.conf"
    atomic_write(real, render_wg_conf(generate_keypair().private_key, VPN), 0o600)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "wg0.conf").symlink_to(real)
    done, ran = _up(tmp_path, None)
    assert done.returncode != 0 and "is a symbolic link" in done.stderr, done.stderr
    assert not ran.exists()


# ---------------------------------------------------------------- install: no symlink following


def _mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_secure_config_dir_makes_it_roots_and_group_readable(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    os.chown(etc, NOBODY, NOBODY)
    for name in ("worker.toml", "node.json", "master-ca.pem", "wireguard.key", "wg0.conf"):
        (etc / name).write_text("x")
        os.chown(etc / name, NOBODY, NOBODY)
        os.chmod(etc / name, 0o666)
    report = InstallReport()
    secure_config_dir(etc, NOBODY, report)
    assert _mode(etc) == (0, NOBODY, 0o750)
    for name in ("worker.toml", "node.json", "master-ca.pem"):
        assert _mode(etc / name) == (0, NOBODY, 0o640), name
    for name in ("wireguard.key", "wg0.conf"):
        assert _mode(etc / name) == (0, 0, 0o600), name
    assert any("made" in step and "worker.toml" in step for step in report.steps)
    again = InstallReport()
    secure_config_dir(etc, NOBODY, again)  # converged: nothing more to change
    assert not any(step.startswith("made") for step in again.steps)


def test_install_refuses_a_symlink_in_the_config_dir_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("secret")
    os.chmod(victim, 0o600)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "worker.toml").symlink_to(victim)
    with pytest.raises(HostError, match=r"worker.toml is a symbolic link.*remove the link"):
        secure_config_dir(etc, NOBODY, InstallReport())
    assert _mode(victim) == (0, 0, 0o600)


def test_install_refuses_a_symlinked_config_dir(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "etc").symlink_to(real)
    with pytest.raises(HostError, match="is a symbolic link"):
        secure_config_dir(tmp_path / "etc", NOBODY, InstallReport())
    assert _mode(real) == (0, 0, 0o700)


def test_share_after_enroll_refuses_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x")
    os.chmod(victim, 0o600)
    link = tmp_path / "node.json"
    link.symlink_to(victim)
    with pytest.raises(HostError, match="symbolic link"):
        share_with_service([link], user="nobody")
    assert _mode(victim) == (0, 0, 0o600)
    real = tmp_path / "master-ca.pem"
    real.write_text("pem")
    share_with_service([real], user="nobody")
    assert _mode(real) == (0, pwd.getpwnam("nobody").pw_gid, 0o640)


# ---------------------------------------------------------------- drain: the pid file is checked

DAEMON = """\
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[-1])
signal.signal(signal.SIGUSR1, lambda *_: out.write_text("drain"))
signal.signal(signal.SIGUSR2, lambda *_: out.write_text("resume"))
print("ready", flush=True)
time.sleep(120)
"""


def _start(argv: list[str], user: int | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, user=user, group=user)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _wait_for(path: Path, text: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text() == text:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never said {text!r}")


@pytest.fixture
def scratch():
    # World-readable: a process run as nobody must read its script here.
    path = Path(tempfile.mkdtemp(prefix="hm-pid-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _fake_daemon(scratch: Path, user: int | None = None) -> tuple[subprocess.Popen, Path]:
    script = scratch / "hivemind-worker"
    script.write_text(DAEMON)
    script.chmod(0o755)
    out = scratch / f"signalled-{user}"
    if user is not None:
        out.touch()
        os.chown(out, user, user)
    python = "/usr/bin/python3" if user is not None else sys.executable  # root's venv is not for nobody
    return _start([python, str(script), "run", str(out)], user), out


def test_drain_signals_a_daemon_it_recognises(scratch, tmp_path):
    proc, out = _fake_daemon(scratch)
    try:
        atomic_write(pid_path(tmp_path), f"{proc.pid}\n", 0o644)
        assert signal_daemon(tmp_path, draining=True) == proc.pid
        _wait_for(out, "drain")
        signal_daemon(tmp_path, draining=False)
        _wait_for(out, "resume")
    finally:
        proc.kill()
        proc.wait()


def test_drain_refuses_a_pid_that_is_not_the_daemon(tmp_path):
    other = _start([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"])
    try:
        atomic_write(pid_path(tmp_path), f"{other.pid}\n", 0o644)
        with pytest.raises(HostError, match=f"pid {other.pid} is not a hivemind-worker daemon.*stale or forged"):
            signal_daemon(tmp_path, draining=True)
        assert other.poll() is None  # SIGUSR1 would have killed it: it was never sent
    finally:
        other.kill()
        other.wait()


def test_drain_refuses_a_daemon_lookalike_of_another_user(scratch, tmp_path):
    proc, out = _fake_daemon(scratch, user=NOBODY)
    try:
        atomic_write(pid_path(tmp_path), f"{proc.pid}\n", 0o644)
        with pytest.raises(HostError, match=f"pid {proc.pid} belongs to uid {NOBODY}, neither root nor"):
            signal_daemon(tmp_path, draining=True)
        assert out.read_text() == ""
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("content", "reason"), [
    ("1\n", "does not hold a pid"),
    ("-1\n", "does not hold a pid"),
    ("12 34\n", "does not hold a pid"),
    ("99999999\n", "does not hold a pid"),
    (None, "is missing"),
])
def test_drain_refuses_bad_pid_files(tmp_path, content, reason):
    if content is not None:
        pid_path(tmp_path).write_text(content)
    with pytest.raises(HostError, match=reason):
        signal_daemon(tmp_path, draining=True)


def test_drain_refuses_a_symlinked_pid_file(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text(f"{os.getpid()}\n")
    pid_path(tmp_path).symlink_to(target)
    with pytest.raises(HostError, match="symbolic link"):
        signal_daemon(tmp_path, draining=True)


def test_drain_cli_says_why(tmp_path):
    pid_path(tmp_path).write_text(f"{os.getpid()}\n")  # pytest itself: not a daemon
    done = cli("drain", env={"HIVEMIND_STATE_DIR": str(tmp_path), "HIVEMIND_CONFIG_DIR": str(tmp_path / "etc")})
    assert done.returncode != 0 and "is not a hivemind-worker daemon" in done.stderr, done.stderr
