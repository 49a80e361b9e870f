"""Thin, blocking adapters over the WireGuard tools (`wg`, `wg-quick`, `ip`).

Every call is bounded by a timeout and turns a missing tool or a failure into
VpnError with the fix. Callers in the event loop use ``asyncio.to_thread``. This
module parses ``wg show IF dump``; it never decides policy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hivemind_worker.errors import VpnError

USERSPACE = "wireguard-go"


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str  # "" until the peer was heard from
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive_s: int


@dataclass(frozen=True)
class TunnelStatus:
    interface: str
    up: bool
    public_key: str = ""
    listen_port: int = 0
    peers: tuple[PeerStatus, ...] = ()

    @property
    def latest_handshake(self) -> int:
        return max((p.latest_handshake for p in self.peers), default=0)


def run(cmd: list[str], timeout_s: float = 30.0, env: dict[str, str] | None = None) -> str:
    """Run a tool; its stdout, or VpnError with its stderr."""
    if shutil.which(cmd[0]) is None:
        raise VpnError(f"{cmd[0]} is not installed; run: apt-get install wireguard-tools")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise VpnError(f"`{' '.join(cmd)}` did not finish within {timeout_s:.0f}s") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        why = detail[-1] if detail else f"exit code {done.returncode}"
        if "Operation not permitted" in why or "Permission denied" in why:
            why += " (run as root: sudo)"
        raise VpnError(f"`{' '.join(cmd)}` failed: {why}")
    return done.stdout


def interface_exists(interface: str) -> bool:
    return Path("/sys/class/net", interface).exists()


def kernel_has_wireguard() -> bool:
    """True when the kernel can make WireGuard interfaces (module loaded or loadable)."""
    if Path("/sys/module/wireguard").exists():
        return True
    probe = f"hmwgprobe{os.getpid() % 10000}"
    try:
        done = subprocess.run(["ip", "link", "add", probe, "type", "wireguard"], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no `ip`: nothing we could use anyway
        return False
    if done.returncode == 0:
        subprocess.run(["ip", "link", "del", probe], capture_output=True, check=False)
        return True
    return False


def quick_env() -> dict[str, str]:
    """Environment for wg-quick: the userspace implementation when the kernel lacks one."""
    if kernel_has_wireguard():
        return {}
    if shutil.which(USERSPACE) is None:
        raise VpnError(
            "the kernel has no WireGuard module and wireguard-go is missing; "
            "run: apt-get install wireguard-go (or load the module: modprobe wireguard)"
        )
    return {"WG_QUICK_USERSPACE_IMPLEMENTATION": USERSPACE}


def parse_dump(interface: str, text: str) -> TunnelStatus:
    """Parse `wg show IF dump` (tab-separated; the first line is the interface)."""
    lines = [line.split("\t") for line in text.strip().splitlines() if line.strip()]
    if not lines or len(lines[0]) < 4:
        raise VpnError(f"unexpected output of `wg show {interface} dump`: {text[:80]!r}")
    _private, public, port, _fwmark = lines[0][:4]
    peers = []
    for fields in lines[1:]:
        if len(fields) < 8:
            raise VpnError(f"unexpected peer line in `wg show {interface} dump`")
        pub, _psk, endpoint, allowed, handshake, rx, tx, keepalive = fields[:8]
        peers.append(
            PeerStatus(
                public_key=pub,
                endpoint="" if endpoint == "(none)" else endpoint,
                allowed_ips=tuple(a for a in allowed.split(",") if a and a != "(none)"),
                latest_handshake=int(handshake),
                rx_bytes=int(rx),
                tx_bytes=int(tx),
                persistent_keepalive_s=0 if keepalive == "off" else int(keepalive),
            )
        )
    return TunnelStatus(interface, True, public, int(port) if port.isdigit() else 0, tuple(peers))


def show(interface: str) -> TunnelStatus:
    """The interface's state; ``up=False`` when it does not exist."""
    if not interface_exists(interface):
        return TunnelStatus(interface, False)
    return parse_dump(interface, run(["wg", "show", interface, "dump"], timeout_s=10))
