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
