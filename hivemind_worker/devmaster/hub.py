"""The seam between the dev-master and an optional WireGuard hub (``serve --wireguard``).

The dev-master only needs what is below; the real hub (hivemind_worker/vpn/hub.py,
``WireGuardHub``) is built by the CLI and injected, so this package never imports
the vpn package. Methods are blocking (they run ``wg``); the server calls them in a
thread. Without a hub, enrollment still hands out addresses from the VPN subnet,
with empty keys and endpoint.
"""

from __future__ import annotations

from typing import Protocol


class VpnHub(Protocol):
    public_key: str  # the hub's WireGuard public key, base64

    @property
    def endpoint(self) -> str:
        """host:port where nodes reach the hub (UDP)."""

    def add_peer(self, public_key: str, address: str) -> None:
        """Allow a node's key, routed to ``address`` (with prefix, e.g. 10.88.0.2/32)."""

    def remove_peer(self, public_key: str) -> None:
        """Forget a node's key (on revocation)."""

    def down(self) -> None:
        """Take the hub's interface down (on `serve` shutdown)."""
