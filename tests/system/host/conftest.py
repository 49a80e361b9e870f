"""A booted Debian machine (systemd-nspawn) with the worker installed the way
install.sh does it: a venv under /opt/hivemind-worker made with the machine's own
/usr/bin/python3, filled from a wheelhouse (no network inside). Every test here runs
on Debian 12 (bookworm, Python 3.11) and Debian 13 (trixie, Python 3.13).

Bookworm boots the shared harness's root (tests/support/nspawn.py) and its dependency
wheels are built on the host; trixie boots the packaging tests' cached trixie root and
uses their download of the Python 3.13 pins (tests/system/packaging/conftest.py), so
neither is built twice. Wheels and the dependency venv are cached under
/var/cache/hivemind-worker-tests; only the project wheel is rebuilt per run."""

from __future__ import annotations

import fcntl
import grp
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nspawn import CACHE, REPO, Machine, ensure_rootfs, unavailable
from tests.system.packaging.conftest import (
    RELEASES, ROOTFS_EXTRA, BuildRoot, download_wheelhouse, release_rootfs, requirements_for,
)

REQUIREMENTS = REPO / "packaging" / "debian" / "requirements.txt"
VENV = "/opt/hivemind-worker"
DOCKER_SOCK = Path("/var/run/docker.sock")


def _pins(requirements: Path = REQUIREMENTS) -> str:
    """name==version lines of the runtime requirements (hashes dropped: sdists are
    built into wheels here, whose hashes differ from the registry's)."""
    return "\n".join(m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.\-]+==[^\s\\]+)", requirements.read_text(), re.M)) + "\n"


@pytest.fixture(scope="session", params=RELEASES)
def release(request) -> str:
    """Each host test runs once per supported Debian release."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture(scope="session")
def host_rootfs(release) -> Path:
    """The cached root file system the release's machines boot from."""
    if release == "bookworm":
        return ensure_rootfs()
    return release_rootfs(release, ROOTFS_EXTRA, "packaging")


def _bookworm_deps() -> Path:
    """Wheels of the Python 3.11 pins, built on the host (whose Python is 3.11)."""
    pins = _pins()
    deps = CACHE / f"wheelhouse-{hashlib.sha256(pins.encode()).hexdigest()[:12]}"
    deps.mkdir(parents=True, exist_ok=True)
    with open(deps / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (deps / "requirements.txt").exists():
            (deps / "pins.txt").write_text(pins)
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-r", str(deps / "pins.txt"),
                            "-w", str(deps)], check=True, timeout=600)
            (deps / "requirements.txt").write_text(pins)
    return deps


@pytest.fixture(scope="session")
def wheelhouse(release, tmp_path_factory) -> Path:
    """The release's dependency wheels (sdists for trixie: pip builds them offline),
    their pins and the project wheel under project/."""
    if not REQUIREMENTS.exists():
        pytest.skip(f"needs {REQUIREMENTS} (the pinned runtime requirements)")
    if release == "bookworm":
        deps, pins = _bookworm_deps(), _pins()
    else:
        roots: dict[str, BuildRoot] = {}
        try:
            deps = download_wheelhouse(release, lambda r: roots.setdefault(r, BuildRoot(r)))
        finally:
            for root in roots.values():
                root.remove()
        pins = _pins(requirements_for(release))
    house = tmp_path_factory.mktemp(f"wheels-{release}")
    for dist in [*deps.glob("*.whl"), *deps.glob("*.tar.gz")]:
        (house / dist.name).symlink_to(dist)
    (house / "requirements.txt").write_text(pins)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(house / "project"), str(REPO)], check=True, timeout=300, capture_output=True)
    return house


def _deps_venv_tar(wheelhouse: Path, rootfs: Path, workdir: Path) -> Path:
    """/opt/hivemind-worker with every dependency installed, cached as a tarball."""
    key = hashlib.sha256((wheelhouse / "requirements.txt").read_bytes() + rootfs.name.encode()).hexdigest()[:12]
    tar = CACHE / f"worker-deps-venv-{key}.tar"
    if tar.exists():
        return tar
    with open(CACHE / ".worker-deps-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it
        if not tar.exists():
            _build_deps_venv(wheelhouse, rootfs, workdir, tar)
    return tar


def _no_sshd(m: Machine) -> None:
    """The packaging roots enable sshd (for Ansible); these machines share the host's
    network, so it must not listen on port 22 here."""
    (m.root / "etc/systemd/system/multi-user.target.wants/ssh.service").unlink(missing_ok=True)
    (m.root / "etc/systemd/system/sshd.service").unlink(missing_ok=True)


def _build_deps_venv(wheelhouse: Path, rootfs: Path, workdir: Path, tar: Path) -> None:
    with Machine.from_tarball(rootfs, workdir) as m:
        _no_sshd(m)
        m.boot(ro_binds=[(wheelhouse.resolve(), "/mnt/wheels"), (CACHE, str(CACHE))])
        m.exec("/usr/bin/python3", "-m", "venv", VENV)
        m.exec(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/mnt/wheels",
               "-r", "/mnt/wheels/requirements.txt", timeout=600)
        tmp = tar.with_suffix(".tmp")
        subprocess.run(["tar", "--numeric-owner", "-C", str(m.root), "-cf", str(tmp), VENV.lstrip("/")], check=True)
        tmp.rename(tar)


def boot_worker_machine(wheelhouse: Path, rootfs: Path, workdir: Path,
                        binds: tuple[tuple[Path, str], ...] = ()) -> Machine:
    """A booted machine with the worker in /opt/hivemind-worker, the host's Docker
    socket, and a docker group with the socket's gid (as docker.io would make it);
    ``binds``: more host directories, read-write."""
    deps = _deps_venv_tar(wheelhouse, rootfs, workdir)
    m = Machine.from_tarball(rootfs, workdir)
    _no_sshd(m)
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(deps), "-C", str(m.root)], check=True)
    binds = (*binds, *([(DOCKER_SOCK.resolve(), "/run/docker.sock")] if DOCKER_SOCK.exists() else []))
    m.boot(binds=binds, ro_binds=[(wheelhouse.resolve(), "/mnt/wheels")])
    m.exec(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--no-deps", "--force-reinstall",
           *[f"/mnt/wheels/project/{w.name}" for w in (wheelhouse / "project").glob("*.whl")], timeout=300)
    if DOCKER_SOCK.exists():
        gid = DOCKER_SOCK.stat().st_gid
        name = grp.getgrgid(gid).gr_name if gid else "root"
        if name != "root":
            m.exec("groupadd", "--system", "--gid", str(gid), "docker")
    return m


@pytest.fixture
def worker_machine(wheelhouse, host_rootfs, tmp_path):
    m = boot_worker_machine(wheelhouse, host_rootfs, tmp_path)
    try:
        yield m
    finally:
        m.poweroff()
        m.remove()
