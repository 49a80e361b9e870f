"""Run inside the hub namespace: a WireGuardHub with one peer and a TCP echo server
on the hub's tunnel address standing in for the master. Prints READY, then serves
until stdin closes. argv: node_public_key node_address echo_port listen_port"""

import socket
import sys
import threading

from hivemind_worker.vpn.hub import WireGuardHub

node_key, node_addr, echo_port, listen_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hub = WireGuardHub(listen_port=listen_port, address="10.88.0.1/24")
hub.up()
try:
    hub.add_peer(node_key, node_addr)
    server = socket.create_server((hub.hub_ip, echo_port))

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)

    threading.Thread(target=serve, daemon=True).start()
    print("READY", hub.public_key, flush=True)
    sys.stdin.read()
finally:
    hub.down()
    print("HUB DOWN", flush=True)
