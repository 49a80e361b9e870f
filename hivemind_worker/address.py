"""Parsing of master addresses: ``host:port`` or ``https://host:port``; the one
loopback check (plain text is allowed only there, so it must not be fooled)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from hivemind_worker.errors import ConfigError

DEFAULT_PORT = 50051


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1; brackets allowed).
    Never a prefix test: ``127.example.com`` is a name anyone can point anywhere."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MasterAddress:
    host: str
    port: int
    tls: bool = True

    @property
    def target(self) -> str:
        """The gRPC target string."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def __str__(self) -> str:
        return self.target


def parse_master_address(text: str) -> MasterAddress:
    """Accept ``host:port``, ``host`` (port 50051), ``https://host:port`` or ``http://``
    (plain, loopback only; checked by the caller)."""
    raw = text.strip()
    if not raw:
        raise ConfigError("master address is empty; give HOST:PORT, e.g. master.example:50051")
    tls = True
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("https", "http", "grpc", "grpcs"):
            raise ConfigError(f"master address {text!r}: scheme must be https:// (or http:// on loopback)")
        tls = parts.scheme in ("https", "grpcs")
        host, port = parts.hostname, parts.port
        if parts.path not in ("", "/"):
            raise ConfigError(f"master address {text!r}: no path allowed, give https://HOST:PORT")
    else:
        parts = urlsplit("//" + raw)
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"master address {text!r}: port must be a number 1-65535") from exc
    if not host:
        raise ConfigError(f"master address {text!r}: no host; give HOST:PORT")
    return MasterAddress(host=host, port=port or DEFAULT_PORT, tls=tls)
