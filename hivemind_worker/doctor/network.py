"""Doctor checks of the network path to the master: WireGuard tools and
implementation, wg0.conf, the tunnel's handshake, and one authenticated gRPC call
(TLS with the pinned CA, credential accepted, clock skew). Read-only."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from hivemind_worker.address import parse_master_address
from hivemind_worker.control.channel import MAX_CLOCK_SKEW_S, SERVER_TIME_KEY
from hivemind_worker.control.probe import probe_master
from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, failed, passed, warned
from hivemind_worker.errors import ConfigError, VpnError, WorkerError
from hivemind_worker.identity import NodeIdentity, load_ca, load_identity
from hivemind_worker.vpn import wgtool
from hivemind_worker.vpn.config import parse_wg_conf

REENROLL = "re-enroll: hivemind-worker enroll --master HOST:PORT --token NEW_TOKEN --ca-hash sha256:..."


def _identity(ctx: DoctorContext) -> NodeIdentity | None:
    def load() -> NodeIdentity | None:
        try:
            return load_identity(ctx.settings.config_dir)
        except WorkerError:
            return None
    return ctx.cached("identity", load)


def _vpn_expected(ctx: DoctorContext) -> bool:
    identity = _identity(ctx)
    # The master assigned a VPN when it gave a hub key (enrollment then wrote wg0.conf).
    return ctx.settings.wg_config.exists() or bool(identity and identity.vpn.server_public_key)


def check_wg_tools(ctx: DoctorContext) -> list[CheckResult]:
    missing = [tool for tool in ("wg", "wg-quick") if shutil.which(tool) is None]
    if missing:
        return [failed("wireguard tools", f"{' and '.join(missing)} not found", "apt-get install wireguard-tools")]
    return [passed("wireguard tools", "wg and wg-quick installed")]


def check_wg_impl(ctx: DoctorContext) -> list[CheckResult]:
    name = "wireguard implementation"
    if Path("/sys/module/wireguard").exists():
        return [passed(name, "kernel module loaded")]
    if shutil.which("wireguard-go"):
        return [passed(name, "no kernel module; wg-quick will use wireguard-go (userspace)")]
    if os.geteuid() == 0 and wgtool.kernel_has_wireguard():
        return [passed(name, "kernel module available")]
    return [failed(name, "no WireGuard kernel module and no wireguard-go",
                   "modprobe wireguard, or apt-get install wireguard-go")]


def check_wg_conf(ctx: DoctorContext) -> list[CheckResult]:
    name = "wg0.conf"
    path = ctx.settings.wg_config
    if not path.exists():
        if _vpn_expected(ctx):
            return [warned(name, f"{path} not written yet", "sudo hivemind-worker up (writes it from the assignment)")]
        return [warned(name, "no VPN assigned by the master: the worker reaches it directly")]
    try:
        text = path.read_text()
    except PermissionError:
        return [warned(name, f"cannot read {path} as this user", "run the doctor as root: sudo hivemind-worker doctor")]
    try:
        config = parse_wg_conf(text, path)
    except VpnError as exc:
        return [failed(name, str(exc).split("; fix ")[0], f"fix the line in {path}, or delete it and run: sudo hivemind-worker up")]
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return [failed(name, f"{path} is mode {mode:04o}: others can read the private key", f"chmod 600 {path}")]
    routes = ", ".join(ip for p in config.peers for ip in p.allowed_ips)
    tunnel = "full tunnel" if config.full_tunnel else "split tunnel"
    return [passed(name, f"valid, 0600, {tunnel} ({routes})")]


def check_wg_interface(ctx: DoctorContext) -> list[CheckResult]:
    name = "wireguard tunnel"
    interface = ctx.settings.wg_config.stem
    if not _vpn_expected(ctx):
        return [warned(name, "no VPN configured")]
    try:
        status = wgtool.show(interface)
    except VpnError as exc:
        return [warned(name, f"cannot inspect {interface}: {exc}", "run the doctor as root: sudo hivemind-worker doctor")]
    if not status.up:
        return [failed(name, f"{interface} is down", "sudo hivemind-worker up")]
    if not status.latest_handshake:
        return [failed(name, f"{interface} is up but never completed a handshake",
                       "check the hub's endpoint is reachable (UDP); sudo hivemind-worker down && sudo hivemind-worker up")]
    age = time.time() - status.latest_handshake
    if age > ctx.handshake_max_age_s:
        return [failed(name, f"{interface}: last handshake {age:.0f}s ago (stale)",
                       "check the hub is up and reachable; sudo hivemind-worker down && sudo hivemind-worker up")]
    peer = max(status.peers, key=lambda p: p.latest_handshake)
    return [passed(name, f"{interface} up, handshake {age:.0f}s ago with {peer.endpoint}, "
                         f"rx {peer.rx_bytes} B, tx {peer.tx_bytes} B")]


def check_master(ctx: DoctorContext) -> list[CheckResult]:
    names = ("master reachable", "credential accepted", "clock skew")
    identity = _identity(ctx)
    if identity is None:
        return [failed(n, "not enrolled", "hivemind-worker enroll --master HOST:PORT --token TOKEN --ca-hash sha256:...")
                for n in names[:2]] + [warned(names[2], "not checked (not enrolled)")]
    try:
        address = parse_master_address(identity.master)
    except WorkerError as exc:
        return [failed(names[0], f"node.json: {exc}", REENROLL)]
    address = replace(address, tls=identity.tls)
    ca = load_ca(ctx.settings.config_dir)
    if identity.tls and ca is None:
        return [failed(names[0], "no pinned master CA (master-ca.pem missing)", REENROLL)]
    scheme = "TLS, pinned CA" if identity.tls else "plain text, loopback"
    try:
        # Checks run in their own thread (doctor/runner.py), so a private loop is fine here.
        probe = asyncio.run(probe_master(address, ca, identity.credential, ctx.settings.max_message_bytes,
                                         ctx.timeout_s * 0.8))
    except ConfigError as exc:
        return [failed(names[0], str(exc), REENROLL)]
    not_checked = [warned(names[1], "not checked (no connection)"), warned(names[2], "not checked (no connection)")]
    if probe.tls_failed:
        return [failed(names[0], f"TLS handshake with {address} failed with the pinned CA ({probe.detail})",
                       "the master's CA changed or this is not your master; " + REENROLL), *not_checked]
    if not probe.answered:
        return [failed(names[0], f"no answer from {address}: {probe.status} {probe.detail}",
                       "check the master is running and reachable (sudo hivemind-worker up for the VPN)"), *not_checked]
    results = [passed(names[0], f"{address} answers ({scheme})")]
    if probe.refused:
        results.append(failed(names[1], f"the master refused this node's credential ({probe.status})", REENROLL))
    else:
        results.append(passed(names[1], f"authenticated call answered ({probe.status})"))
    if probe.skew_s is None:
        results.append(warned(names[2], f"the master does not report its time ({SERVER_TIME_KEY} metadata)",
                              "check the host clock: timedatectl status"))
    elif abs(probe.skew_s) > MAX_CLOCK_SKEW_S:
        results.append(failed(names[2], f"this host's clock is {-probe.skew_s:+.1f}s off the master's",
                              "enable time sync: timedatectl set-ntp true"))
    else:
        results.append(passed(names[2], f"{-probe.skew_s:+.2f}s against the master"))
    return results


WG_TOOLS = Check(("wireguard tools",), check_wg_tools, "report a bug: looking up tools hung")
WG_IMPL = Check(("wireguard implementation",), check_wg_impl, "`ip link` hangs: check the host's networking")
WG_CONF = Check(("wg0.conf",), check_wg_conf, "check the config directory's disk")
WG_INTERFACE = Check(("wireguard tunnel",), check_wg_interface, "`wg show` hangs: check wireguard-go (sudo hivemind-worker down && up)")
MASTER = Check(("master reachable", "credential accepted", "clock skew"), check_master,
               "check the master is running and reachable (sudo hivemind-worker up for the VPN)")
