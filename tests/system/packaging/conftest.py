"""Fixtures of the packaging tests: booted Debian hosts (systemd-nspawn), a dev-master
on the host's loopback, the offline wheelhouse and the built .deb - each per release:
every test that uses them runs on Debian 12 (bookworm) and on Debian 13 (trixie).
The trixie .deb and wheelhouse are made in a trixie build root (BuildRoot), since the
package is bound to the release's Python.

Hosts are booted with the shared harness (tests/support/nspawn.py). Everything slow is
cached under /var/cache/hivemind-worker-tests/ and keyed on what it is built from: the
root file system (scripts/build-test-rootfs.sh + sshd for Ansible), the wheelhouse
(packaging/debian/requirements.txt) and the .deb (scripts/build-deb.sh hashes its
sources). A booted host is a throw-away copy of the cached root file system.

The booted hosts share the host's network (no --private-network), so a dev-master
listening on 127.0.0.1 is reachable from inside them, and each SSH server gets its
own loopback port.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.nspawn import BUILD_SCRIPT, Machine, ensure_rootfs, unavailable

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("HIVEMIND_TEST_CACHE", "/var/cache/hivemind-worker-tests"))
REQUIREMENTS = REPO / "packaging" / "debian" / "requirements.txt"
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter the booted hosts have too
ROOTFS_EXTRA = "openssh-server,python3-apt"  # for the Ansible hosts


def _require_machine() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, systemd-nspawn, nsenter)")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}: apt-get install systemd-container debootstrap util-linux")


def _key(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _locked(name: str):
    """One builder at a time for a cached artefact (parallel test runs share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _git_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return sorted({f for f in out.splitlines() if (REPO / f).is_file()})


# --------------------------------------------------------------------------- caches


RELEASES = ("bookworm", "trixie")  # Debian 12 (Python 3.11) and 13 (Python 3.13)
# What scripts/build-deb.sh needs, in the root file system a release's .deb is built in.
BUILD_EXTRA = "build-essential,dh-virtualenv,dh-python,debhelper,dpkg-dev,python3-pip,lintian,perl-openssl-defaults"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"  # the TLS-inspecting proxy's trust


def release_rootfs(release: str, extra: str, kind: str) -> Path:
    """A cached root file system of `release` (scripts/build-test-rootfs.sh plus `extra`),
    keyed on the script, the packages and the release."""
    key = hashlib.sha256((BUILD_SCRIPT.read_text() + extra + release).encode()).hexdigest()[:12]
    tarball = CACHE / "packaging" / f"{release}-{kind}-{key}.tar"
    if not tarball.exists():
        with _locked(f"rootfs-{release}-{kind}"):
            if not tarball.exists():
                subprocess.run([str(BUILD_SCRIPT), str(tarball), extra], check=True, timeout=1500,
                               env={**os.environ, "DEBIAN_RELEASE": release})
    return tarball


def requirements_for(release: str) -> Path:
    """The hash-pinned dependencies of the release's Python (build-deb.sh --lock)."""
    return REQUIREMENTS if release == "bookworm" else REQUIREMENTS.with_name("requirements-py313.txt")


@pytest.fixture(scope="session", params=RELEASES)
def release(request) -> str:
    """Each packaging test runs once per supported Debian release."""
    _require_machine()
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture(scope="session")
def packaging_rootfs(release) -> Path:
    """The cached root file system of the release (scripts/build-test-rootfs.sh: systemd,
    python3 + venv, WireGuard tools) plus sshd and python3-apt for Ansible."""
    return release_rootfs(release, ROOTFS_EXTRA, "packaging")


class BuildRoot:
    """A release's build root file system, unpacked once per test session, where
    commands run under systemd-nspawn (not booted) with the host's network and CA
    bundle: a trixie .deb must be built on trixie."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.dir: Path | None = None

    def run(self, *cmd: str, binds: dict[str, str] | None = None, ro_binds: dict[str, str] | None = None,
            timeout: float = 1200) -> subprocess.CompletedProcess:
        if self.dir is None:
            tarball = release_rootfs(self.release, BUILD_EXTRA, "build")
            self.dir = Path(tempfile.mkdtemp(prefix=f"build-{self.release}.", dir="/var/tmp"))
            subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(self.dir)], check=True, timeout=600)
        args = ["systemd-nspawn", "-q", "-D", str(self.dir), "--register=no", "--keep-unit", "--as-pid2",
                f"--bind-ro={HOST_CA}:/etc/ssl/host-ca.crt", "--setenv=PIP_CERT=/etc/ssl/host-ca.crt",
                "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1"]
        args += [f"--bind={src}:{dst}" for src, dst in (binds or {}).items()]
        args += [f"--bind-ro={src}:{dst}" for src, dst in (ro_binds or {}).items()]
        return subprocess.run([*args, "--", *cmd], capture_output=True, text=True, timeout=timeout)

    def remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def build_roots():
    roots: dict[str, BuildRoot] = {}
    yield lambda release: roots.setdefault(release, BuildRoot(release))
    for root in roots.values():
        root.remove()


@pytest.fixture(scope="session")
def wheelhouse(release, build_roots) -> Path:
    """The worker's Python dependencies for the release's Python, downloaded once
    (hash-checked) for offline hosts."""
    return download_wheelhouse(release, build_roots)


def download_wheelhouse(release: str, build_roots) -> Path:
    """The cached download of the release's pinned dependencies (tests/system/host
    uses it too); `build_roots` gives a release's BuildRoot."""
    reqs = requirements_for(release)
    dest = CACHE / "packaging" / f"pip-download-{release}-{_key(reqs)}"
    with _locked("packaging-pip-download"):
        if not dest.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix="wheelhouse.tmp."))
            if release == "bookworm":
                env = {**os.environ, "PIP_CERT": os.environ.get("PIP_CERT", HOST_CA), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
                done = subprocess.run([SYSTEM_PYTHON, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                                       "-r", str(reqs), "-d", str(tmp)], capture_output=True, text=True,
                                      timeout=600, env=env)
            else:  # the release's own pip picks the wheels for its own Python
                done = build_roots(release).run("python3", "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                                                "-r", "/reqs.txt", "-d", "/out", binds={str(tmp): "/out"},
                                                ro_binds={str(reqs): "/reqs.txt"}, timeout=600)
            if done.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise AssertionError(f"pip download ({release}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
            tmp.chmod(0o755)
            tmp.rename(dest)
    return dest


def build_deb(release: str, wheelhouse: Path, build_roots, version: str | None = None) -> Path:
    """scripts/build-deb.sh for the release (on the host for bookworm, in the trixie
    build root for trixie); it skips the build when its sources did not change and
    fails when lintian reports an error. Returns the .deb."""
    out = CACHE / "deb"
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--version", version] if version else []
    with _locked("deb"):
        started = time.monotonic()
        if release == "bookworm":
            done = subprocess.run(["bash", str(REPO / "scripts" / "build-deb.sh"), "--out", str(out), *extra],
                                  capture_output=True, text=True, timeout=1200,
                                  env={**os.environ, "WHEELHOUSE": str(wheelhouse)})
        else:
            src = Path(tempfile.mkdtemp(prefix="deb-src.", dir="/var/tmp"))
            try:
                copy_source(src)
                done = build_roots(release).run("env", "WHEELHOUSE=/wheels", "bash", "/src/scripts/build-deb.sh",
                                                "--out", "/out", *extra, binds={str(out): "/out", str(src): "/src"},
                                                ro_binds={str(wheelhouse): "/wheels"})
            finally:
                shutil.rmtree(src, ignore_errors=True)
        assert done.returncode == 0, f"build-deb.sh ({release}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        print(f"build-deb.sh ({release}): {time.monotonic() - started:.1f} s: {done.stdout.strip().splitlines()[-1:]}")
    upstream = version or next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
                               if line.startswith("version"))
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    deb = out / f"hivemind-worker_{upstream}+deb{12 if release == 'bookworm' else 13}_{arch}.deb"
    assert deb.is_file(), f"build-deb.sh did not leave {deb}"
    return deb


@pytest.fixture(scope="session")
def deb_package(release, wheelhouse, build_roots) -> Path:
    """The release's .deb of this tree's version."""
    return build_deb(release, wheelhouse, build_roots)


# --------------------------------------------------------------------------- dev-master


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DevMaster:
    state_dir: Path
    address: str
    ca_hash: str
    proc: subprocess.Popen

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hivemind_worker", "dev-master", *args,
                               "--state-dir", str(self.state_dir)],
                              capture_output=True, text=True, timeout=timeout)

    def token(self, uses: int = 1) -> str:
        done = self.cli("token", "create", "--uses", str(uses), "--ttl", "30m")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def nodes(self) -> list[dict]:
        done = self.cli("nodes", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def wait_connected(self, hostnames: set[str], timeout: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in self.nodes() if r["hostname"] in hostnames]
            if {r["hostname"] for r in rows if r["session_state"] == "connected"} == hostnames:
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes {sorted(hostnames)} not all connected after {timeout:.0f} s: {rows}")
            time.sleep(1)


@pytest.fixture(scope="module")
def dev_master(tmp_path_factory) -> DevMaster:
    """A TLS dev-master on 127.0.0.1 (shared with the booted hosts' network)."""
    state = tmp_path_factory.mktemp("dev-master")
    port = free_port()
    log = open(state / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hivemind_worker", "dev-master", "serve",
                             "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in (state / "serve.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dev-master did not start:\n{(state / 'serve.log').read_text()}")
            time.sleep(0.2)
        master = DevMaster(state, f"127.0.0.1:{port}", "", proc)
        done = master.cli("ca-hash")
        assert done.returncode == 0, done.stderr
        master.ca_hash = done.stdout.strip()
        yield master
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------- booted hosts


@dataclass
class Host:
    """A booted systemd host (tests/support/nspawn.py Machine); commands run in its
    namespaces through a shell."""

    machine: Machine
    ssh_port: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.machine.name

    @property
    def root(self) -> Path:
        return self.machine.root

    def sh(self, script: str, check: bool = True, timeout: float = 300,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        done = self.machine.exec("/bin/sh", "-c", script, check=False, timeout=timeout, env=env)
        if check and done.returncode != 0:
            raise AssertionError(f"[{self.name}] `{script}` exited {done.returncode}:\n"
                                 f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
        return done

    def journal(self, unit: str = "hivemind-worker", lines: int = 60) -> str:
        return self.sh(f"journalctl -u {unit} -n {lines} --no-pager", check=False).stdout


def copy_source(dest: Path) -> None:
    """The worker's source tree as a fresh clone would have it."""
    for rel in _git_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)


@contextlib.contextmanager
def booted_host(tarball: Path, name: str, binds: dict[str, str] | None = None,
                ssh_port: int | None = None, authorized_key: str | None = None,
                source: str | None = None, files: dict[str, Path] | None = None,
                rw_binds: dict[str, str] | None = None):
    """Unpack the cached root file system, boot it with systemd and yield a Host;
    power it off and delete the copy afterwards."""
    work = Path(tempfile.mkdtemp(prefix="pk-hosts.", dir="/var/tmp"))
    started = time.monotonic()
    machine = Machine.from_tarball(tarball, work, name)
    root = machine.root
    try:
        if source:  # the worker's source tree, as a clone would have it
            copy_source(root / source.lstrip("/"))
        for dst, src in (files or {}).items():
            shutil.copy2(src, root / dst.lstrip("/"))
        wants = root / "etc/systemd/system/multi-user.target.wants/ssh.service"
        if ssh_port:  # sshd on its own loopback port: the hosts share the network
            machine.write("/etc/ssh/sshd_config.d/test.conf",
                          f"Port {ssh_port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
                          "PasswordAuthentication no\nUseDNS no\n")
            machine.write("/root/.ssh/authorized_keys", authorized_key or "", 0o600)
            (root / "root/.ssh").chmod(0o700)
            if not wants.is_symlink():  # (its absolute target only resolves inside)
                wants.symlink_to("/lib/systemd/system/ssh.service")
        else:
            wants.unlink(missing_ok=True)
            (root / "etc/systemd/system/sshd.service").unlink(missing_ok=True)
        copied = time.monotonic() - started
        machine.boot(binds=[(Path("/var/run/docker.sock"), "/run/docker.sock"),
                            *((Path(src), dst) for src, dst in (rw_binds or {}).items())],
                     ro_binds=[(Path(src), dst) for src, dst in (binds or {}).items()])
        host = Host(machine, ssh_port=ssh_port,
                    timings={"copy_s": copied, "boot_s": time.monotonic() - started - copied})
        yield host
    finally:
        machine.poweroff()
        machine.remove()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def boot(packaging_rootfs):
    """`with boot(name, ...) as host:` boots a fresh copy of the cached root file system."""
    return lambda name, **kw: booted_host(packaging_rootfs, name, **kw)


# --------------------------------------------------------------------------- Ansible

ANSIBLE_PINS = ["ansible-core>=2.16,<2.20", "ansible-lint"]  # 2.19 is the newest for Python 3.11


@pytest.fixture(scope="session")
def ansible_venv() -> Path:
    """ansible-core and ansible-lint in their own venv (not the project's), cached."""
    _require_machine()
    venv = CACHE / "ansible-venv"
    with _locked("ansible-venv"):
        if not (venv / "bin" / "ansible-playbook").exists() or not (venv / "bin" / "ansible-lint").exists():
            env = {**os.environ, "PIP_CERT": os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")}
            subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
            done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *ANSIBLE_PINS],
                                  capture_output=True, text=True, timeout=900, env=env)
            assert done.returncode == 0, f"pip install {ANSIBLE_PINS} failed:\n{done.stderr[-3000:]}"
    return venv


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory) -> Path:
    """A throw-away SSH key for the controller to reach the booted hosts."""
    if not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.skip("needs the OpenSSH client: apt-get install openssh-client")
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "packaging-tests", "-f", str(key)],
                   check=True, timeout=30)
    return key


@pytest.fixture(scope="session")
def source_archive(tmp_path_factory) -> Path:
    """The worker's source tree as a .tar.gz, as a release would ship it."""
    import tarfile

    archive = tmp_path_factory.mktemp("source") / "hivemind-worker.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for rel in _git_files():
            tar.add(REPO / rel, arcname=rel)
    return archive
