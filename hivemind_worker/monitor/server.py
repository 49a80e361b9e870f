"""Serve the monitor app with uvicorn inside the daemon's own event loop.

The daemon owns signals (uvicorn's signal handling is not used: we call its
startup()/shutdown() rather than serve()) and stops the server by setting
``should_exit``. The socket is bound here, before uvicorn starts, so a busy
port is a clear ``ConfigError`` instead of uvicorn's ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from hivemind_worker.errors import ConfigError

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"monitor: cannot listen on {host}:{port} ({exc.strerror}); set monitor_port (or monitor_enabled = false) "
            "in worker.toml"
        ) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: Starlette, host: str, port: int, should_exit: asyncio.Event,
                sock: socket.socket | None = None, tls: tuple[Path, Path] | None = None) -> None:
    """Run until ``should_exit`` is set. Raises ConfigError if the port is taken.
    ``tls`` (certificate, key): serve HTTPS, as required off loopback."""
    sock = sock or bind(host, port)
    # date_header off: the Date header is refreshed by uvicorn's main loop, which we
    # do not run (it wakes 10 times a second: ~0.13 CPU s/min on an idle node, half
    # the idle budget). We drive startup()/shutdown() ourselves and sleep in between.
    # http/ws named, not "auto": auto probes for httptools, websockets and wsproto on
    # every start; the monitor speaks plain HTTP/1.1 (SSE included) through h11.
    config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False, http="h11", ws="none",
                            timeout_graceful_shutdown=2, server_header=False, date_header=False,
                            ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)
    try:
        config.load()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"monitor_tls_cert / monitor_tls_key: cannot load them ({exc})") from exc
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    stop = getattr(app.state, "stop", None)
    await server.startup(sockets=[sock])
    await server.on_tick(0)  # sets the default response headers once
    logger.info("monitor listening on %s://%s:%d/monitor.html", "https" if tls else "http", host, sock.getsockname()[1])
    try:
        await should_exit.wait()
    finally:
        if stop is not None:  # ends open event streams so shutdown does not wait on them
            stop.set()
        await server.shutdown()
        sock.close()
