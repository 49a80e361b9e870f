"""Hand-written stand-ins for the doctor tests: a TLS gRPC master that answers
ResultOffset (checks the credential, reports its clock), a Docker socket that
accepts and never answers, a Docker API that reports an old version, and NVML."""

from __future__ import annotations

import datetime as dt
import json
import socket
import socketserver
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hivemind_worker.control.channel import AUTH_HEADER, SERVER_TIME_KEY
from hivemind_worker.proto import worker_pb2_grpc


def make_ca(name: str = "test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def server_cert(ca: x509.Certificate, ca_key) -> tuple[bytes, bytes]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "master")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _Servicer(worker_pb2_grpc.NodeControlServicer):
    def __init__(self, credential: str, clock_offset_s: float) -> None:
        self.credential, self.clock_offset_s = credential, clock_offset_s

    def ResultOffset(self, request, context):
        auth = dict(context.invocation_metadata()).get(AUTH_HEADER, "")
        context.set_trailing_metadata(((SERVER_TIME_KEY, str(int((time.time() + self.clock_offset_s) * 1000))),))
        if auth != f"Bearer {self.credential}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked node credential")
        context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id!r} is not assigned to this node")


class FakeMaster:
    """A TLS gRPC server on 127.0.0.1 signed by ``ca``."""

    def __init__(self, port: int, credential: str, clock_offset_s: float = 0.0) -> None:
        self.ca, ca_key = make_ca()
        cert_pem, key_pem = server_cert(self.ca, ca_key)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        worker_pb2_grpc.add_NodeControlServicer_to_server(_Servicer(credential, clock_offset_s), self.server)
        self.server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
        self.address = f"127.0.0.1:{port}"

    def __enter__(self) -> "FakeMaster":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)


class HungSocket:
    """A unix socket that accepts connections and never answers (a wedged dockerd)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def __enter__(self) -> "HungSocket":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()


class OldDockerApi:
    """A unix-socket HTTP server answering the Docker API's /version like Docker 19.03."""

    def __init__(self, path: Path, version: str = "19.03.15") -> None:
        body = json.dumps({"Version": version, "ApiVersion": "1.40", "MinAPIVersion": "1.12"}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

            def address_string(self) -> str:
                return "unix"

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "OldDockerApi":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeNvml:
    """The part of pynvml the doctor uses."""

    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, gpus: list[str], init_error: int | None = None) -> None:
        self.gpus, self.init_error = gpus, init_error

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error is not None:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:  # noqa: N802
        return self.gpus[handle]
