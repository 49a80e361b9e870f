"""The one loopback check: IP literals and ``localhost`` only, never a prefix, so a
name such as ``127.example.com`` (which anyone can point anywhere) never gets the
plain-text path, on the worker, its monitor or the dev-master."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.address import is_loopback_host, parse_master_address
from hivemind_worker.config import load_settings
from hivemind_worker.control.channel import open_channel
from hivemind_worker.devmaster.server import MasterConfig
from hivemind_worker.errors import ConfigError


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LocalHost"])
def test_loopback(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", [
    "127.example.com", "127.0.0.1.nip.io", "localhost.example.com", "x.localhost", "10.0.0.1",
    "0.0.0.0", "::", "", "127.0.0.256", "::ffff:10.0.0.1",
])
def test_not_loopback(host):
    assert not is_loopback_host(host)


def test_plain_text_to_a_name_that_starts_with_127_is_refused():
    address = parse_master_address("http://127.example.com:50051")
    assert not address.is_loopback
    with pytest.raises(ConfigError, match="refusing plain-text gRPC to 127.example.com:50051"):
        open_channel(address, None, 4 * 1024 * 1024)


def test_monitor_host_that_starts_with_127_needs_tls(tmp_path: Path):
    with pytest.raises(ConfigError, match="monitor_host"):
        load_settings({"monitor_host": "127.example.com"}, environ={}, config_file=None)
    assert load_settings({"monitor_host": "127.0.0.2"}, environ={}).monitor_host == "127.0.0.2"


def test_dev_master_serves_plain_text_on_loopback_only(tmp_path: Path):
    with pytest.raises(ConfigError, match="127.example.com"):
        MasterConfig(tmp_path, listen="127.example.com:50051", insecure=True).validate()
    MasterConfig(tmp_path, listen="127.0.0.1:0", insecure=True).validate()
