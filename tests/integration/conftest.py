"""Fixtures for every integration area: a dev-master and worker nodes per test
(tests/support/stack.py), real processes over loopback TLS."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.support.stack import DevMaster, Node


@pytest.fixture
def devmaster(tmp_path):
    master = DevMaster(tmp_path / "master", free_port(), tmp_path / "master.log")
    master.start()
    yield master
    master.stop()


@pytest.fixture
def make_node(tmp_path):
    nodes: list[Node] = []

    def make(name: str = "node", **settings) -> Node:
        node = Node(tmp_path / name, **settings)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
