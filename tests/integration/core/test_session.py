"""The daemon's session: reconnects after the master dies, drains on SIGTERM,
stops on a revoked credential, survives oversize messages."""

from __future__ import annotations

import signal
import time

import grpc

from tests.support.stack import wait_for


def connected(master, node_id):
    def check():
        for record in master.nodes():
            if record["node_id"] == node_id and record["session"] == "connected":
                return record
        return None

    return check


def test_reconnects_after_master_restart_with_same_identity(devmaster, make_node):
    node = make_node(reconnect_initial_s=0.2, reconnect_max_s=2, report_interval_s=1)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(connected(devmaster, node_id), 20, "the first session")

    backoffs = node.log.read_text().count("reconnecting to the master in")
    devmaster.kill()
    wait_for(lambda: node.log.read_text().count("reconnecting to the master in") >= backoffs + 3, 20,
             "the worker backing off several times while the master is gone")
    assert node.proc.poll() is None, "the worker must keep running without its master"
    devmaster.start()
    started = time.monotonic()
    wait_for(connected(devmaster, node_id), 2 + 5, "the reconnect within the backoff bound")
    assert time.monotonic() - started <= 2 + 5
    assert [r["node_id"] for r in devmaster.nodes()] == [node_id], "no duplicate node"


def test_sigterm_drains_and_master_sees_the_node_leave(devmaster, make_node):
    node = make_node(report_interval_s=1)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(connected(devmaster, node_id), 20, "the session")
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0
    wait_for(lambda: [r for r in devmaster.nodes() if r["node_id"] == node_id and r["session"] != "connected"],
             10, "the master to see the node leave")


def test_revoked_credential_stops_the_retry_loop(devmaster, make_node):
    node = make_node(reconnect_initial_s=0.2, reconnect_max_s=1)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(connected(devmaster, node_id), 20, "the session")
    devmaster.run("nodes", "revoke", node_id)
    assert node.wait(30) == 6, "exit code 6: systemd's RestartPreventExitStatus stops the restarts"
    assert "re-enroll" in node.log.read_text()


def test_oversize_message_is_refused_without_crashing_either_side(devmaster, make_node):
    from hivemind_worker.proto import worker_pb2 as pb
    from hivemind_worker.proto import worker_pb2_grpc as rpc

    node = make_node(report_interval_s=1)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(connected(devmaster, node_id), 20, "the session")

    ca = (node.config_dir / "master-ca.pem").read_bytes()
    with grpc.secure_channel(devmaster.address, grpc.ssl_channel_credentials(ca)) as channel:
        stub = rpc.NodeControlStub(channel)
        huge = pb.EnrollRequest(token="x" * (8 * 1024 * 1024))
        try:
            stub.Enroll(huge, timeout=10)
            raise AssertionError("an 8 MiB message must be refused")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refused_at = time.time()

    def reported_since():
        record = connected(devmaster, node_id)()
        return record and (record["last_report_at"] or 0) > refused_at

    wait_for(reported_since, 10, "a telemetry report after the refusal (the session carries on)")
    assert devmaster.proc.poll() is None and node.proc.poll() is None
    assert connected(devmaster, node_id)()


def test_sighup_reloads_and_journal_gets_json_lines(devmaster, make_node):
    import json as jsonlib

    node = make_node(report_interval_s=1)
    node.env.pop("HIVEMIND_LOG_FORMAT")
    node.env["JOURNAL_STREAM"] = "8:12345"  # what systemd sets when stdout is the journal
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(connected(devmaster, node_id), 20, "the session")
    # The file sets what the environment does not (the environment would win).
    (node.config_dir / "worker.toml").write_text('log_level = "DEBUG"\nreconnect_max_s = 7\n')
    node.signal(signal.SIGHUP)
    wait_for(lambda: "settings reloaded" in node.log.read_text(), 10, "the reload")
    (node.config_dir / "worker.toml").write_text('log_level = "LOUD"\n')
    node.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in node.log.read_text(), 10, "the refused reload")
    assert node.proc.poll() is None, "a bad reload keeps the old settings and the daemon"
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0
    records = [jsonlib.loads(line) for line in node.log.read_text().splitlines() if line.startswith("{")]
    assert records, "under systemd every line is JSON"
    assert any(r.get("node_id") == node_id for r in records)
    reloaded = [r for r in records if "settings reloaded" in r["message"]]
    # The reload names what took effect (and what would need a restart).
    assert reloaded and "log_level, reconnect_max_s took effect" in reloaded[0]["message"], reloaded
    assert any(r["level"] == "DEBUG" for r in records), "the new log level took effect"
    credential = jsonlib.loads((node.config_dir / "node.json").read_text())["credential"]
    assert credential not in node.log.read_text()


def test_master_never_sends_a_node_more_than_it_accepts(devmaster, make_node):
    """The node states its maximum in hello; a task spec over it is refused with the
    reason instead of breaking the node's stream over and over."""
    node = make_node(report_interval_s=1, reconnect_initial_s=0.2, reconnect_max_s=1, max_message_bytes=65536)
    assert node.enroll(devmaster).returncode == 0
    node.start()
    node_id = node.node_id()
    wait_for(connected(devmaster, node_id), 20, "the session")
    from tests.conftest import cli

    big = "x" * 100_000
    done = cli("submit", "--command", "true", "--env", f"BIG={big}", "--wait", "--state-dir", str(devmaster.state))
    assert done.returncode == 7
    assert "more than any connected node accepts (65536)" in done.stderr
    assert node.proc.poll() is None and devmaster.proc.poll() is None
    assert connected(devmaster, node_id)()
    assert "session to the master ended" not in node.log.read_text()
