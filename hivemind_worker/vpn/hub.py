"""The hub side of the VPN, for the dev-master (`dev-master serve --wireguard`).

``WireGuardHub`` brings up its own interface (default ``hm-hub0``, 10.88.0.1/24)
with a listen port, adds each enrolled node as a peer (``add_peer(public_key,
"10.88.0.N/32")``) and removes it again. It satisfies devmaster.hub.VpnHub: the
dev-master allocates the addresses and puts ``public_key``/``endpoint`` into the
node's VpnAssignment (``subnet`` as AllowedIPs, ``hub_ip`` for master_address).
Call ``up()`` before handing it to the dev-master. Needs root. The
methods block (subprocess): call them through ``asyncio.to_thread`` from a loop.
"""

from __future__ import annotations

import ipaddress
import logging
import tempfile
from pathlib import Path

from hivemind_worker.errors import VpnError
from hivemind_worker.fsutil import atomic_write
from hivemind_worker.vpn import wgtool
from hivemind_worker.vpn.keys import decode_key, generate_keypair, public_key_of

logger = logging.getLogger(__name__)

DEFAULT_INTERFACE = "hm-hub0"
DEFAULT_ADDRESS = "10.88.0.1/24"
DEFAULT_PORT = 51820


class WireGuardHub:
    def __init__(
        self,
        interface: str = DEFAULT_INTERFACE,
        listen_port: int = DEFAULT_PORT,
        address: str = DEFAULT_ADDRESS,
        private_key: str | None = None,
        work_dir: Path | None = None,
        endpoint_host: str = "127.0.0.1",
    ) -> None:
        self.interface = interface
        self.listen_port = listen_port
        self.address = ipaddress.ip_interface(address)
        self._private_key = private_key or generate_keypair().private_key
        self.public_key = public_key_of(self._private_key)
        self._work_dir = work_dir
        self.endpoint_host = endpoint_host  # how nodes reach this machine
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._conf: Path | None = None

    @property
    def subnet(self) -> str:
        """The VPN subnet (nodes' AllowedIPs), e.g. ``10.88.0.0/24``."""
        return str(self.address.network)

    @property
    def hub_ip(self) -> str:
        """The hub's own address inside the tunnel, e.g. ``10.88.0.1``."""
        return str(self.address.ip)

    @property
    def endpoint(self) -> str:
        """``host:port`` (UDP) nodes dial; goes into their VpnAssignment."""
        host = f"[{self.endpoint_host}]" if ":" in self.endpoint_host else self.endpoint_host
        return f"{host}:{self.listen_port}"

    def up(self) -> None:
        """Bring the interface up; a leftover interface of the same name is replaced."""
        if self._conf is None:
            if self._work_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="hm-hub-")
                directory = Path(self._tmp.name)
            else:
                directory = self._work_dir
            self._conf = directory / f"{self.interface}.conf"
        atomic_write(
            self._conf,
            f"[Interface]\nPrivateKey = {self._private_key}\nListenPort = {self.listen_port}\n"
            f"Address = {self.address}\n",
            0o600,
        )
        if wgtool.interface_exists(self.interface):
            logger.warning("replacing a leftover %s", self.interface)
            wgtool.run(["ip", "link", "del", self.interface], timeout_s=10)
        wgtool.run(["wg-quick", "up", str(self._conf)], timeout_s=60, env=wgtool.quick_env())
        logger.info("hub %s up on UDP %d, %s", self.interface, self.listen_port, self.address)

    def add_peer(self, public_key: str, address: str) -> None:
        """Route ``address`` (e.g. ``10.88.0.7/32``) to the node with ``public_key``.
        Idempotent: adding a peer again replaces its allowed IPs."""
        try:
            decode_key(public_key)
            ipaddress.ip_network(address, strict=False)
        except (VpnError, ValueError) as exc:
            raise VpnError(f"hub peer {public_key!r} {address!r}: {exc}") from exc
        wgtool.run(["wg", "set", self.interface, "peer", public_key, "allowed-ips", address], timeout_s=10)
        logger.info("hub peer added: %s -> %s", address, public_key)

    def remove_peer(self, public_key: str) -> None:
        wgtool.run(["wg", "set", self.interface, "peer", public_key, "remove"], timeout_s=10)
        logger.info("hub peer removed: %s", public_key)

    def status(self) -> wgtool.TunnelStatus:
        return wgtool.show(self.interface)

    def down(self) -> None:
        """Remove the interface (idempotent) and the temporary config."""
        if wgtool.interface_exists(self.interface):
            if self._conf is not None and self._conf.exists():
                wgtool.run(["wg-quick", "down", str(self._conf)], timeout_s=60)
            else:
                wgtool.run(["ip", "link", "del", self.interface], timeout_s=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._conf = None, None
