"""The monitor over real HTTP (uvicorn on loopback): JSON API, read-only, SSE, shutdown."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from hivemind_worker.errors import ConfigError
from hivemind_worker.monitor.server import bind


def test_api_shapes(live_monitor, fake_view):
    fake_view.backfill(minutes=10)
    fake_view.start_task("task-a")
    fake_view.log("task-a", "epoch 1 loss=0.42")
    with httpx.Client(base_url=live_monitor.url, timeout=5) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/monitor.html"
        page = c.get("/monitor.html")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        for asset in ("/static/monitor.js", "/static/monitor.css", "/static/favicon.svg"):
            assert c.get(asset).status_code == 200, asset
        status = c.get("/api/status").json()
        assert status["enrolled"] and status["session"]["connected"]
        assert status["tasks_by_state"] == {"running": 1}
        assert status["usage"]["gpu_percent"] is not None and status["earnings"]["total"] > 0
        assert [t["task_id"] for t in c.get("/api/tasks").json()] == ["task-a"]
        logs = c.get("/api/tasks/task-a/logs", params={"n": 5}).json()
        assert logs[0]["text"] == "epoch 1 loss=0.42" and logs[0]["seq"] == 1
        assert c.get("/api/tasks/nope/logs").json() == []
        assert c.get("/api/tasks/task-a/logs", params={"n": "x"}).status_code == 400
        series = c.get("/api/telemetry").json()
        assert len(series) == 10 and {"time_ms", "cpu_percent", "memory_percent", "gpus"} <= set(series[0])
        assert len(c.get("/api/telemetry", params={"since_ms": series[-3]["time_ms"]}).json()) == 2
        assert c.get("/api/telemetry/latest").json()["gpus"][0]["name"] == "NVIDIA A100-SXM4-40GB"
        earnings = c.get("/api/earnings").json()
        assert earnings["reports"] == 10 and earnings["total"] == sum(p["reward"] for p in series)
        assert c.get("/healthz").text == "ok\n"
        assert c.get("/api/history").json() == []


def test_read_only_and_headers(live_monitor):
    with httpx.Client(base_url=live_monitor.url, timeout=5) as c:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/api/status", "/api/tasks", "/monitor.html", "/metrics", "/api/settings", "/logout"):
                r = c.request(method, path)
                assert r.status_code == 405, (method, path, r.status_code)
        r = c.get("/api/status")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert c.get("/api/settings").status_code == 404


def _read_events(url: str, want: set[str], timeout: float = 10) -> dict[str, list]:
    """Read the SSE stream until each event name in ``want`` was seen."""
    seen: dict[str, list] = {}
    with httpx.stream("GET", url + "/api/events", timeout=timeout) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        deadline = time.monotonic() + timeout
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                seen.setdefault(name, []).append(json.loads(line[6:]))
                if want <= set(seen):
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"events seen {sorted(seen)}, wanted {sorted(want)}")


def test_events_push_changes(live_monitor, fake_view):
    fake_view.report()
    first = _read_events(live_monitor.url, {"status", "tasks", "history", "earnings", "telemetry"})
    assert first["history"][0] == [] and len(first["telemetry"][0]) == 1

    def later():
        time.sleep(0.5)
        fake_view.start_task("task-b")
        fake_view.log("task-b", "hello from b")
        fake_view.report()
        time.sleep(0.5)
        fake_view.finish_task("task-b", "done", 0)

    threading.Thread(target=later).start()
    seen: dict[str, list] = {}
    with httpx.stream("GET", live_monitor.url + "/api/events", timeout=10) as r:
        name = None
        deadline = time.monotonic() + 8
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                seen.setdefault(name, []).append(json.loads(line[6:]))
                hist = seen.get("history", [])
                if hist and hist[-1] and hist[-1][0]["task_id"] == "task-b":
                    break
            assert time.monotonic() < deadline, f"no finished task pushed; saw {sorted(seen)}"
    assert any(d["task_id"] == "task-b" and d["lines"][0]["text"] == "hello from b" for d in seen["logs"])
    row = seen["history"][-1][0]
    assert row["state"] == "done" and row["exit_code"] == 0 and row["reward"] > 0


def test_stop_with_open_event_stream_is_prompt(fake_view, server_factory):
    server = server_factory(fake_view)
    opened = threading.Event()

    def hold():
        try:
            with httpx.stream("GET", server.url + "/api/events", timeout=30) as r:
                for _ in r.iter_lines():
                    opened.set()
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert opened.wait(5)
    assert server.stop() < 3.5
    t.join(5)


def test_busy_port_is_a_config_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(ConfigError, match="monitor_port"):
            bind("127.0.0.1", s.getsockname()[1])


def _self_signed(tmp_path):
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "monitor")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "monitor.pem", tmp_path / "monitor.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_monitor_speaks_tls_when_given_a_certificate(fake_view, tmp_path):
    from tests.integration.monitor.conftest import LiveServer

    server = LiveServer(fake_view, tls=_self_signed(tmp_path)).start()
    try:
        assert server.url.startswith("https://")
        assert httpx.get(server.url + "/api/status", verify=server.verify, timeout=5).json()["node_id"]
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=2)
    finally:
        server.stop()


def test_off_loopback_monitor_needs_tls(tmp_path):
    from hivemind_worker.config import load_settings
    from hivemind_worker.errors import ConfigError

    env = {"HIVEMIND_CONFIG_DIR": str(tmp_path), "HIVEMIND_MONITOR_HOST": "0.0.0.0"}
    with pytest.raises(ConfigError, match="monitor_host: 0.0.0.0 is off loopback"):
        load_settings(environ=env)
    cert, key = _self_signed(tmp_path)
    ok = load_settings(environ={**env, "HIVEMIND_MONITOR_TLS_CERT": str(cert), "HIVEMIND_MONITOR_TLS_KEY": str(key)})
    assert ok.monitor_tls_cert == cert
