"""The dev-master's use of a WireGuard hub, through a hand-written fake of the
devmaster.hub.VpnHub seam (the real hub is tested with real tunnels in tests/*/vpn)."""

from __future__ import annotations

import asyncio

from hivemind_worker.devmaster import registry
from hivemind_worker.devmaster.db import open_db
from tests.integration.devmaster.peer import FakeNode, MasterThread


class FakeHub:
    public_key = "aHViLXB1YmxpYy1rZXktYWFhYWFhYWFhYWFhYWFhYWE="
    endpoint = "192.0.2.1:51820"

    def __init__(self) -> None:
        self.peers: dict[str, str] = {}
        self.is_down = False

    def add_peer(self, public_key: str, address: str) -> None:
        self.peers[public_key] = address

    def remove_peer(self, public_key: str) -> None:
        self.peers.pop(public_key, None)

    def down(self) -> None:
        self.is_down = True


async def test_enrollment_adds_the_peer_and_revocation_removes_it(tmp_path):
    hub = FakeHub()
    master = MasterThread(tmp_path / "m", hub=hub, poll_interval_s=0.05).start()
    db = open_db(master.state.db)
    try:
        node = FakeNode(master)
        reply = await node.enroll(registry.create_token(db))
        assert reply.vpn.server_public_key == hub.public_key and reply.vpn.endpoint == hub.endpoint
        assert reply.vpn.master_address == ""  # it listens on loopback only, not inside the tunnel
        assert list(hub.peers.values()) == [reply.vpn.address]
        registry.revoke(db, reply.node_id)
        for _ in range(50):
            if not hub.peers:
                break
            await asyncio.sleep(0.05)
        assert hub.peers == {}
        await node.close()
    finally:
        master.stop()
        db.close()
    assert hub.is_down


async def test_a_restarted_master_gives_the_hub_its_peers_again(tmp_path):
    first = MasterThread(tmp_path / "m", hub=FakeHub()).start()
    db = open_db(first.state.db)
    node = FakeNode(first)
    reply = await node.enroll(registry.create_token(db))
    await node.close()
    first.stop()
    hub = FakeHub()
    second = MasterThread(tmp_path / "m", hub=hub).start()
    try:
        assert list(hub.peers.values()) == [reply.vpn.address]
    finally:
        second.stop()
        db.close()


def test_master_address_inside_the_tunnel():
    from hivemind_worker.devmaster.service import tunnel_master_address

    assert tunnel_master_address("0.0.0.0", 50051, "10.88.0.0/24") == "10.88.0.1:50051"
    assert tunnel_master_address("10.88.0.1", 7, "10.88.0.0/24") == "10.88.0.1:7"
    assert tunnel_master_address("127.0.0.1", 7, "10.88.0.0/24") == ""
