"""Doctor checks of the network path to the master: WireGuard tools and
implementation, wg0.conf, the tunnel's handshake, and one authenticated gRPC call
(TLS with the pinned CA, credential accepted, clock skew). Read-only."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from hivemind_worker.address import parse_master_address
from hivemind_worker.doctor.model import Check, CheckResult, DoctorContext, failed, passed, warned
from hivemind_worker.errors import VpnError, WorkerError
from hivemind_worker.identity import NodeIdentity, load_ca, load_identity
from hivemind_worker.vpn import wgtool
from hivemind_worker.vpn.config import parse_wg_conf

# Metadata (initial or trailing) where a master reports its clock, unix milliseconds.
SERVER_TIME_KEY = "x-server-time-ms"
MAX_SKEW_S = 5.0
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


def _tls_failure(details: str) -> bool:
    text = details.lower()
    return any(k in text for k in ("handshake", "certificate", "ssl", "tls"))


def check_master(ctx: DoctorContext) -> list[CheckResult]:
    import grpc

    from hivemind_worker.proto import worker_pb2, worker_pb2_grpc

    names = ("master reachable", "credential accepted", "clock skew")
    identity = _identity(ctx)
    if identity is None:
        return [failed(n, "not enrolled", "hivemind-worker enroll --master HOST:PORT --token TOKEN --ca-hash sha256:...")
                for n in names[:2]] + [warned(names[2], "not checked (not enrolled)")]
    try:
        address = parse_master_address(identity.master)
    except WorkerError as exc:
        return [failed(names[0], f"node.json: {exc}", REENROLL)]
    ca = load_ca(ctx.settings.config_dir)
    if identity.tls and ca is None:
        return [failed(names[0], "no pinned master CA (master-ca.pem missing)", REENROLL)]
    if identity.tls:
        channel = grpc.secure_channel(address.target, grpc.ssl_channel_credentials(root_certificates=ca))
    else:
        channel = grpc.insecure_channel(address.target)
    scheme = "TLS, pinned CA" if identity.tls else "plain text, loopback"
    sent = time.time()
    try:
        stub = worker_pb2_grpc.NodeControlStub(channel)
        metadata = (("authorization", f"Bearer {identity.credential}"),)
        try:
            _, call = stub.ResultOffset.with_call(
                worker_pb2.ResultOffsetRequest(task_id="doctor-probe"), metadata=metadata, timeout=ctx.timeout_s * 0.8)
            code, trailers, initial = grpc.StatusCode.OK, call.trailing_metadata(), call.initial_metadata()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            trailers, initial = exc.trailing_metadata() or (), exc.initial_metadata() or ()
            if code == grpc.StatusCode.UNAVAILABLE and identity.tls and _tls_failure(details):
                return [failed(names[0], f"TLS handshake with {address} failed with the pinned CA ({details[-120:]})",
                               "the master's CA changed or this is not your master; " + REENROLL),
                        warned(names[1], "not checked (no connection)"), warned(names[2], "not checked (no connection)")]
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return [failed(names[0], f"no answer from {address}: {code.name} {details[-120:]}",
                               "check the master is running and reachable (sudo hivemind-worker up for the VPN)"),
                        warned(names[1], "not checked (no connection)"), warned(names[2], "not checked (no connection)")]
    finally:
        channel.close()
    received = time.time()
    results = [passed(names[0], f"{address} answers ({scheme})")]
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        results.append(failed(names[1], f"the master refused this node's credential ({code.name})", REENROLL))
    else:
        results.append(passed(names[1], f"authenticated call answered ({code.name})"))
    server_ms = next((v for k, v in tuple(initial) + tuple(trailers) if k == SERVER_TIME_KEY), None)
    if server_ms is None:
        results.append(warned(names[2], f"the master does not report its time ({SERVER_TIME_KEY} metadata)",
                              "check the host clock: timedatectl status"))
    else:
        skew = int(server_ms) / 1000 - (sent + received) / 2
        if abs(skew) > MAX_SKEW_S:
            results.append(failed(names[2], f"this host's clock is {-skew:+.1f}s off the master's",
                                  "enable time sync: timedatectl set-ntp true"))
        else:
            results.append(passed(names[2], f"{-skew:+.2f}s against the master"))
    return results


WG_TOOLS = Check(("wireguard tools",), check_wg_tools, "report a bug: looking up tools hung")
WG_IMPL = Check(("wireguard implementation",), check_wg_impl, "`ip link` hangs: check the host's networking")
WG_CONF = Check(("wg0.conf",), check_wg_conf, "check the config directory's disk")
WG_INTERFACE = Check(("wireguard tunnel",), check_wg_interface, "`wg show` hangs: check wireguard-go (sudo hivemind-worker down && up)")
MASTER = Check(("master reachable", "credential accepted", "clock skew"), check_master,
               "check the master is running and reachable (sudo hivemind-worker up for the VPN)")
