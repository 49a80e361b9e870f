"""The node's side of the VPN: `hivemind-worker up` / `down` / the tunnel status.

``up`` validates wg0.conf (or renders it from the stored assignment), brings it up
with wg-quick (wireguard-go where the kernel has no WireGuard), waits for a
handshake within a bound and checks that the master answers through the tunnel.
Both ``up`` and ``down`` are idempotent. Needs root (CAP_NET_ADMIN); the daemon
never calls ``up``/``down``, only ``tunnel_status``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hivemind_worker.config import Settings
from hivemind_worker.errors import NotEnrolledError, VpnError, WorkerError
from hivemind_worker.fsutil import atomic_write, is_private
from hivemind_worker.identity import load_identity, wg_key_path
from hivemind_worker.vpn import wgtool
from hivemind_worker.vpn.config import WgConfig, check_config_policy, parse_wg_conf, render_wg_conf
from hivemind_worker.vpn.policy import VpnPolicy
from hivemind_worker.vpn.wgtool import TunnelStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpResult:
    status: TunnelStatus
    already_up: bool
    rendered: bool  # wg0.conf was written from the stored assignment
    master_checked: str  # "host:port" checked through the tunnel, "" when none known


def interface_of(path: Path) -> str:
    """wg-quick names the interface after the file: /etc/hivemind-worker/wg0.conf -> wg0."""
    if path.suffix != ".conf" or not 1 <= len(path.stem) <= 15:
        raise VpnError(f"{path}: wg-quick needs a file named IFACE.conf with a name of at most 15 characters")
    return path.stem


def load_config(path: Path, policy: VpnPolicy | None = None) -> WgConfig:
    """Read and validate wg0.conf; it must be private (it holds the private key).
    With a policy (``up``), also its routes and DNS against the node's settings."""
    try:
        text = _read_trusted(path)
    except FileNotFoundError as exc:
        raise VpnError(f"{path} is missing; run: hivemind-worker enroll (it writes it), then hivemind-worker up") from exc
    except PermissionError as exc:
        raise VpnError(f"cannot read {path} (permission denied); run as root: sudo hivemind-worker up") from exc
    config = parse_wg_conf(text, path)
    if not is_private(path):
        raise VpnError(f"{path} holds the private key but others can read it; run: chmod 600 {path}")
    if policy is not None:
        check_config_policy(config, policy)
    return config


def _read_trusted(path: Path) -> str:
    """The file's text. As root, only from a root-owned file in a directory only root
    can change: wg-quick reads it again after us, so whoever could write it in
    between could make root run its commands."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise VpnError(f"{path} is a symbolic link; replace the link with the file itself") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if os.geteuid() == 0:
            parent = os.stat(path.parent)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise VpnError(f"{path} is owned by uid {st.st_uid} (mode {st.st_mode & 0o777:04o}): whoever can "
                               f"write it could make root run commands; run: chown root: {path} && chmod 600 {path}")
            if parent.st_uid != 0 or parent.st_mode & 0o022:
                raise VpnError(f"{path.parent} can be changed by uid {parent.st_uid} or its group, so {path.name} "
                               f"could be swapped under wg-quick; run: chown root: {path.parent} && chmod go-w {path.parent}")
        return fh.read(1024 * 1024).decode("ascii", errors="replace")


def _ensure_config(settings: Settings) -> tuple[Path, bool]:
    path = settings.wg_config
    if path.exists():
        return path, False
    try:
        identity = load_identity(settings.config_dir)
        private_key = wg_key_path(settings.config_dir).read_text().strip()
    except (NotEnrolledError, FileNotFoundError) as exc:
        raise VpnError(f"{path} is missing and the node is not enrolled; run: hivemind-worker enroll first") from exc
    atomic_write(path, render_wg_conf(private_key, identity.vpn, VpnPolicy.from_settings(settings)), 0o600)
    logger.info("wrote %s from the stored VPN assignment", path)
    return path, True


def _master_address(settings: Settings) -> str:
    try:
        return load_identity(settings.config_dir).vpn.master_address
    except WorkerError:  # not enrolled, or a broken node.json: doctor's business, not up's
        return ""


def wait_handshake(interface: str, timeout_s: float, since: float = 0.0) -> TunnelStatus:
    """Poll until some peer completed a handshake after ``since`` (unix seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = wgtool.show(interface)
        if status.latest_handshake and status.latest_handshake >= int(since):
            return status
        if time.monotonic() >= deadline:
            endpoints = ", ".join(p.endpoint or "?" for p in status.peers) or "no peer"
            raise VpnError(
                f"{interface} is up but no handshake with {endpoints} within {timeout_s:.0f}s; "
                "check the hub's UDP port is reachable and the master knows this node's public key "
                "(the interface stays up; `hivemind-worker down` removes it)"
            )
        time.sleep(0.2)


def check_master(address: str, timeout_s: float) -> None:
    """A TCP connection to the master through the tunnel."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise VpnError(
            f"the tunnel is up but the master at {address} does not answer through it ({exc}); "
            "check the master is running and listens on its VPN address"
        ) from exc


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise VpnError(f"`{what}` changes network interfaces and needs root: run sudo hivemind-worker {what}")


def up_sync(settings: Settings, handshake_timeout_s: float = 20.0, master_timeout_s: float = 5.0) -> UpResult:
    _need_root("up")
    path, rendered = _ensure_config(settings)
    load_config(path, VpnPolicy.from_settings(settings))  # before wg-quick ever sees it
    interface = interface_of(path)
    already = wgtool.interface_exists(interface)
    if already:
        logger.info("%s is already up", interface)
    else:
        started = time.time() - 1
        wgtool.run(["wg-quick", "up", str(path)], timeout_s=60, env=wgtool.quick_env())
        logger.info("brought %s up", interface)
    # Already up: a handshake within the re-key period (2 min + slack) proves it alive.
    status = wait_handshake(interface, handshake_timeout_s, since=time.time() - 180 if already else started)
    master = _master_address(settings)
    if master:
        check_master(master, master_timeout_s)
    return UpResult(status, already, rendered, master)


def down_sync(settings: Settings) -> bool:
    """Take the tunnel down; False when it was not up."""
    _need_root("down")
    path = settings.wg_config
    interface = interface_of(path)
    if not wgtool.interface_exists(interface):
        return False
    if path.exists():
        wgtool.run(["wg-quick", "down", str(path)], timeout_s=60)
    else:  # the config is gone: remove the interface directly
        wgtool.run(["ip", "link", "del", interface], timeout_s=10)
    logger.info("took %s down", interface)
    return True


async def up(settings: Settings, handshake_timeout_s: float = 20.0) -> UpResult:
    return await asyncio.to_thread(up_sync, settings, handshake_timeout_s)


async def down(settings: Settings) -> bool:
    return await asyncio.to_thread(down_sync, settings)


async def tunnel_status(interface: str) -> TunnelStatus:
    """Peer, endpoint, latest handshake, rx/tx bytes from `wg show IF dump` (root)."""
    return await asyncio.to_thread(wgtool.show, interface)


def describe_peers(status: TunnelStatus, now: float | None = None) -> list[str]:
    """One line per peer, as `up` and `status` print them."""
    now = time.time() if now is None else now
    lines = []
    for peer in status.peers:
        age = f"{int(now - peer.latest_handshake)}s ago" if peer.latest_handshake else "never"
        lines.append(f"peer {peer.public_key} endpoint {peer.endpoint or '-'} handshake {age} "
                     f"rx {peer.rx_bytes} B tx {peer.tx_bytes} B")
    return lines
