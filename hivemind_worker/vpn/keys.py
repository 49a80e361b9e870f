"""WireGuard key pairs: X25519 through ``cryptography``, base64 like ``wg genkey``.

The private key is made on the node and never leaves it; this module only makes
and checks keys, it does not store them (enrollment writes them 0600).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hivemind_worker.errors import VpnError

# cryptography (~8 MB resident) loads where a key is made (enroll, the dev-master's
# hub): the daemon only decodes keys, and keeps whatever it imports for its life.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_key: str  # base64, 44 characters; a secret
    public_key: str

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public_key={self.public_key!r})"


def generate_keypair() -> KeyPair:
    """A fresh key pair, the same format as ``wg genkey | tee >(wg pubkey)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return KeyPair(private_key=base64.b64encode(raw).decode(), public_key=_public_of(private))


def public_key_of(private_key: str) -> str:
    """The public key of a base64 private key (like ``wg pubkey``)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = decode_key(private_key)
    return _public_of(X25519PrivateKey.from_private_bytes(raw))


def decode_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 WireGuard key; VpnError when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VpnError("not a base64 32-byte key") from exc
    if len(raw) != 32:
        raise VpnError("not a base64 32-byte key")
    return raw


def _public_of(private: X25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()
