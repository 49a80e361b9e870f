"""Enrollment over real loopback gRPC with TLS against a real dev-master."""

from __future__ import annotations

import json
import stat
import time

from tests.conftest import cli


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enrollment_succeeds_and_files_are_private(devmaster, make_node):
    node = make_node()
    done = node.enroll(devmaster)
    assert done.returncode == 0, done.stderr
    assert "Enrolled as node-" in done.stdout
    files = sorted(p.name for p in node.config_dir.iterdir())
    assert {"node.json", "master-ca.pem", "wireguard.key"} <= set(files)
    for path in node.config_dir.iterdir():
        assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
    identity = json.loads((node.config_dir / "node.json").read_text())
    assert identity["master"] == devmaster.address
    # The private key stayed here: the master only ever saw the public key.
    private = (node.config_dir / "wireguard.key").read_text().strip()
    assert private not in (devmaster.state / "state.db").read_bytes().decode("latin-1")
    [record] = devmaster.nodes()
    assert record["node_id"] == identity["node_id"]


def test_bad_ca_hash_is_refused_and_writes_nothing(devmaster, make_node):
    node = make_node()
    done = node.enroll(devmaster, ca_hash="sha256:" + "0" * 64)
    assert done.returncode != 0
    assert "does not present a CA with hash" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not node.config_dir.exists() or not any(node.config_dir.iterdir())
    assert devmaster.nodes() == []


def test_expired_token_is_refused(devmaster, make_node):
    token = devmaster.token("--ttl", "1s")
    time.sleep(2.1)
    node = make_node()
    done = node.enroll(devmaster, token=token)
    assert done.returncode != 0
    assert "expired" in done.stderr
    assert not (node.config_dir / "node.json").exists()


def test_reused_single_use_token_is_refused(devmaster, make_node):
    token = devmaster.token("--uses", "1")
    first = make_node("first").enroll(devmaster, token=token)
    assert first.returncode == 0, first.stderr
    second = make_node("second")
    done = second.enroll(devmaster, token=token)
    assert done.returncode != 0
    assert "already used" in done.stderr
    assert not (second.config_dir / "node.json").exists()


def test_unknown_token_and_unreachable_master(devmaster, make_node):
    node = make_node()
    done = node.enroll(devmaster, token="hmt_not-a-real-token")
    assert done.returncode != 0 and "not recognised" in done.stderr
    env = {"HIVEMIND_CONFIG_DIR": str(node.config_dir)}
    from tests.conftest import free_port

    done = cli("enroll", "--master", f"127.0.0.1:{free_port()}", "--token", "x", "--ca-hash", "sha256:" + "0" * 64, env=env)
    assert done.returncode != 0 and "cannot reach the master" in done.stderr
    assert not (node.config_dir / "node.json").exists()


def test_enrolling_twice_needs_force(devmaster, make_node):
    node = make_node()
    assert node.enroll(devmaster).returncode == 0
    again = node.enroll(devmaster)
    assert again.returncode != 0 and "already enrolled" in again.stderr and "--force" in again.stderr
