"""The dev-master's certificate authority and its TLS server certificate.

CA hash (what a worker pins with ``--ca-hash``): the string
``"sha256:" + hashlib.sha256(ca_der).hexdigest()`` where ``ca_der`` is the DER
encoding of the whole CA *certificate* (``x509.Certificate.public_bytes(DER)``, i.e.
the PEM body base64-decoded) - not only its public key as kubeadm hashes it. Lower
case hex, 64 digits. ``ca_hash_of_pem()`` computes it from a PEM; a client that got
the CA PEM from the unauthenticated ``GetCA`` call compares exactly this.

Keys are EC P-256, made here with `cryptography`, written 0600. The CA lives ten
years; the server certificate is re-issued on every `serve` start (so its names
match the listen address) and lists the listen host, 127.0.0.1, ::1, localhost and
the VPN hub address (for a wildcard listen address: every local address and the
host name; more names with ``serve --tls-name``). ``server.pem`` holds the server certificate followed by the CA
certificate, so a TLS peer also receives the CA in the handshake chain.

This module must not open sockets; it only reads and writes files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hivemind_worker.devmaster.layout import StateDir
from hivemind_worker.errors import ConfigError
from hivemind_worker.fsutil import atomic_write


def ca_hash_of_pem(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_hash(state: StateDir) -> str:
    try:
        return ca_hash_of_pem(state.ca_cert.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{state.ca_cert}: no CA yet; it is made by the first "
            f"`hivemind-worker dev-master serve --state-dir {state.root}` (or `dev-master ca-hash` creates it)"
        ) from exc


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ensure_ca(state: StateDir) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA, or make it (first start). Returns (certificate, key)."""
    state.create()
    if state.ca_cert.exists() and state.ca_key.exists():
        cert = x509.load_pem_x509_certificate(state.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(state.ca_key.read_bytes(), password=None)
        return cert, key  # type: ignore[return-value]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HiveMind dev-master"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"hivemind dev-master CA ({socket.gethostname()})"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a CA certificate without its key would be useless after a crash.
    atomic_write(state.ca_key, _key_pem(key), mode=0o600)
    atomic_write(state.ca_cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, key


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen or name in ("0.0.0.0", "::"):
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _local_names() -> list[str]:
    """This host's name and addresses: a wildcard listener is dialled at any of them."""
    import psutil

    names = [socket.gethostname(), socket.getfqdn()]
    for addresses in psutil.net_if_addrs().values():
        for addr in addresses:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                names.append(addr.address.split("%")[0])  # drop an IPv6 zone
    return names


def issue_server_cert(state: StateDir, hosts: list[str]) -> tuple[bytes, bytes]:
    """Issue a fresh server certificate for ``hosts`` (+ loopback names).

    Writes server.pem (leaf + CA) and server.key (0600) and returns (chain_pem, key_pem).
    """
    ca_cert, ca_key = ensure_ca(state)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [*hosts, "localhost", "127.0.0.1", "::1"]
    if any(h in ("0.0.0.0", "::") for h in hosts):
        names.extend(_local_names())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hivemind dev-master")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _key_pem(key)
    atomic_write(state.server_key, key_pem, mode=0o600)
    atomic_write(state.server_cert, chain, mode=0o644)
    return chain, key_pem
