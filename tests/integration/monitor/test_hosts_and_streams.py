"""The monitor answers only requests that name an allowed host (a DNS-rebinding page
sends its own name in Host: it gets 400, not task logs), and caps its live event
streams (503 with the reason past the cap; a closed stream frees its slot). Real
uvicorn on loopback, real HTTP clients."""

from __future__ import annotations

import socket
import time

import httpx

from hivemind_worker.monitor.live_view import allowed_hosts
from tests.integration.monitor.conftest import LiveServer


def get(server: LiveServer, path: str, host: str) -> httpx.Response:
    return httpx.get(server.url + path, headers={"host": host}, timeout=5)


def test_only_allowed_host_names_are_answered(fake_view):
    server = LiveServer(fake_view, allowed_hosts=["node.example"]).start()
    try:
        port = server.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                     f"node.example:{port}", "127.0.0.1"):
            assert get(server, "/api/tasks", host).status_code == 200, host
        for host in (f"evil.example:{port}", f"127.example.com:{port}", f"localhost.evil.example:{port}",
                     f"node.example.evil.example:{port}", "", "[::1"):
            response = get(server, "/api/tasks/t-secret/logs", host)
            assert response.status_code == 400 and "host" in response.text.lower(), (host, response.text)
            assert response.headers["x-frame-options"] == "DENY"  # our headers on refusals too
        assert get(server, "/api/events", f"evil.example:{port}").status_code == 400
    finally:
        server.stop()


def test_event_streams_are_capped_and_a_closed_one_frees_its_slot(fake_view):
    server = LiveServer(fake_view, max_subscribers=2).start()
    clients = [httpx.Client(timeout=5) for _ in range(3)]
    streams = []
    try:
        for client in clients[:2]:
            stream = client.stream("GET", server.url + "/api/events")
            response = stream.__enter__()
            assert response.status_code == 200
            streams.append(stream)
        refused = httpx.get(server.url + "/api/events", timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
        assert "2 live views are open already" in refused.json()["error"]
        assert httpx.get(server.url + "/api/status", timeout=5).status_code == 200  # the rest still answers
        streams.pop().__exit__(None, None, None)
        clients[1].close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the disconnect on its next push
            with clients[2].stream("GET", server.url + "/api/events") as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream never gave its slot back"
            time.sleep(0.1)
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
        for client in clients:
            client.close()
        server.stop()


def test_a_wildcard_monitor_answers_the_machines_own_names_and_addresses():
    hosts = allowed_hosts("0.0.0.0")
    assert socket.gethostname() in hosts and "127.0.0.1" in hosts and "0.0.0.0" not in hosts
    assert allowed_hosts("::1") == ["[::1]"] and allowed_hosts("node.example") == ["node.example"]


def certificate(tmp_path, *dns: str) -> tuple:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "monitor")])
    now = dt.datetime.now(dt.timezone.utc)
    sans = [*(x509.DNSName(d) for d in dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), False).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "monitor.pem", tmp_path / "monitor.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_tls_monitor_answers_the_names_its_certificate_is_for(fake_view, tmp_path):
    cert, key = certificate(tmp_path, "node.example.test", "*.fleet.example.test")
    hosts = allowed_hosts("0.0.0.0", cert)
    assert {"node.example.test", "*.fleet.example.test", "127.0.0.1"} <= set(hosts)
    assert allowed_hosts("127.0.0.1", tmp_path / "missing.pem") == ["127.0.0.1"]
    server = LiveServer(fake_view, tls=(cert, key), allowed_hosts=hosts).start()
    try:
        def status(host: str) -> int:
            return httpx.get(server.url + "/api/tasks", headers={"host": host}, verify=server.verify, timeout=5).status_code

        assert status("node.example.test:5001") == 200 and status("n1.fleet.example.test") == 200
        assert status("evil.example:5001") == 400 and status("fleet.example.test.evil.example") == 400
    finally:
        server.stop()
