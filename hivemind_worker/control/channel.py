"""gRPC channels to the master: TLS with the CA pinned at enrollment, plain text only
on loopback, message-size limits and keepalives from the settings."""

from __future__ import annotations

import hashlib
import socket
import ssl

import grpc

from hivemind_worker.address import MasterAddress
from hivemind_worker.errors import ConfigError, EnrollmentError, MasterUnreachable

AUTH_HEADER = "authorization"
# Metadata (initial or trailing) where a master reports its clock, unix milliseconds.
SERVER_TIME_KEY = "x-server-time-ms"
# Task timeouts and log times are compared across hosts: beyond this, say so.
MAX_CLOCK_SKEW_S = 5.0


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Notice a dead master (a cut cable, a NAT that forgot us) within a minute
        # even when the stream is idle.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # We run our own capped, jittered backoff and make a fresh channel per attempt.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def open_channel(address: MasterAddress, ca_pem: bytes | None, max_message_bytes: int) -> grpc.aio.Channel:
    options = channel_options(max_message_bytes)
    if not address.tls:
        if not address.is_loopback:
            raise ConfigError(f"refusing plain-text gRPC to {address}: only loopback may skip TLS")
        return grpc.aio.insecure_channel(address.target, options=options)
    if ca_pem is None:
        raise ConfigError(f"no pinned CA for {address}; enroll again with --ca-hash")
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address.target, creds, options=options)


def auth_metadata(credential: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {credential}"),)


def ca_fingerprint(der: bytes) -> str:
    """The pin a master prints: ``sha256:`` + hex SHA-256 of the CA certificate (DER)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fetch_pinned_ca(address: MasterAddress, expected: str, timeout_s: float = 10.0) -> bytes:
    """Fetch the master's certificate chain over unverified TLS and return the CA
    certificate (PEM) whose fingerprint equals ``expected``.

    Like kubeadm's discovery: the TLS channel is not trusted yet, the pin is what
    makes the CA trusted. Blocking; call it in a thread.
    """
    expected = expected.strip().lower()
    if not expected.startswith("sha256:") or len(expected) != 7 + 64:
        raise ConfigError(f"--ca-hash {expected!r} is not of the form sha256:<64 hex digits>")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw, server_hostname=address.host) as tls:
                chain = _unverified_chain(tls)
    except ssl.SSLError as exc:
        raise MasterUnreachable(f"TLS handshake with {address} failed ({exc.reason}); is it a HiveMind master?") from exc
    except OSError as exc:
        raise MasterUnreachable(f"cannot reach the master at {address}: {exc.strerror or exc}; check the address and firewall") from exc
    for der in chain:
        if ca_fingerprint(der) == expected:
            return ssl.DER_cert_to_PEM_cert(der).encode()
    raise EnrollmentError(
        f"the master at {address} does not present a CA with hash {expected}; "
        "check the hash printed by the master (`dev-master ca-hash`) — never enroll against an unverified master"
    )


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The peer's certificate chain as DER. Public as SSLSocket.get_unverified_chain()
    from Python 3.13 (DER bytes); the C object has had it since 3.10 (objects)."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return list(public() or [])
    # Private in typeshed (undeclared), present in CPython 3.11-3.12, the only versions that take this path.
    sslobj = tls._sslobj  # type: ignore[attr-defined]
    return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in sslobj.get_unverified_chain() or []]  # type: ignore[attr-defined]

