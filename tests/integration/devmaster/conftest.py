"""Fixtures for the dev-master's tests: a real TLS dev-master on loopback and
scripted nodes (tests/integration/devmaster/peer.py)."""

from __future__ import annotations

import pytest

from hivemind_worker.devmaster import registry
from hivemind_worker.devmaster.db import open_db
from tests.integration.devmaster.peer import FakeNode, MasterThread


@pytest.fixture
def master(tmp_path, request):
    """A dev-master; ``@pytest.mark.parametrize("master", [{...MasterConfig fields}],
    indirect=True)`` changes its settings."""
    # Short event-ack holds: these tests wait for an ack after each event
    # (test_event_acks runs with the default hold).
    config = {"poll_interval_s": 0.05, "event_ack_hold_s": 0.05, **getattr(request, "param", {})}
    m = MasterThread(tmp_path / "master", **config).start()
    yield m
    m.stop()


@pytest.fixture
def db(master):
    """A second connection on the state database, as every CLI command opens one."""
    conn = open_db(master.state.db)
    yield conn
    conn.close()


@pytest.fixture
def token(db):
    def make(ttl_s: float = 3600, uses: int = 1) -> str:
        return registry.create_token(db, ttl_s, uses)

    return make


@pytest.fixture
async def make_node(master, token):
    nodes: list[FakeNode] = []

    async def make(hostname: str = "fake-node", connect: bool = True, **hello) -> FakeNode:
        node = FakeNode(master, hostname)
        await node.enroll(token())
        if connect:
            await node.connect(**hello)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.close()
