"""Where the dev-master keeps its files, and the small value parsers its CLI shares.

State directory layout (``--state-dir DIR``; default ``$HIVEMIND_STATE_DIR/dev-master``,
else ``./dev-master-state``)::

    DIR/state.db            SQLite (WAL): tokens, nodes, sessions, tasks, events, logs
    DIR/ca.pem, ca.key      the CA (key 0600), made on first use
    DIR/server.pem          server certificate + CA certificate (the TLS chain)
    DIR/server.key          its key (0600); both re-issued by each `serve` start
    DIR/bundles/<task>.zip  bundles queued by `submit`
    DIR/results/<task>.tar.gz  complete result archives (``.part`` while uploading)
    DIR/results/<task>.attempt-<n>.tar.gz  the archive of an earlier attempt that was lost
    DIR/master.json         written by `serve`: listen address, tls, pid, ca_hash
    DIR/serve.lock          flock held by the one `serve` of this directory
    DIR/wg-hub.key          with --wireguard: the hub's private key (0600), kept across restarts
    DIR/hm-hub0.conf        with --wireguard: the hub's wg-quick config (0600), written by the hub

Nothing here opens sockets or databases.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hivemind_worker.errors import ConfigError
from hivemind_worker.fsutil import atomic_write


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @cached_property  # (a Path join costs ~5 us; an upload asks for it a dozen times)
    def results(self) -> Path:
        return self.root / "results"

    @property
    def master_json(self) -> Path:
        return self.root / "master.json"

    def bundle(self, task_id: str) -> Path:
        return self.bundles / f"{task_id}.zip"

    def result(self, task_id: str) -> Path:
        return self.results / f"{task_id}.tar.gz"

    def result_part(self, task_id: str) -> Path:
        return self.results / f"{task_id}.part"

    def create(self) -> "StateDir":
        if not self.root.exists():
            self.root.mkdir(parents=True, mode=0o700)
        for path in (self.bundles, self.results):
            path.mkdir(exist_ok=True, mode=0o700)
        return self

    def require(self) -> "StateDir":
        """For commands that need an existing state directory."""
        if not self.db.exists():
            raise ConfigError(
                f"{self.root}: no dev-master state here; start one with "
                f"`hivemind-worker dev-master serve --state-dir {self.root}` (or pass the right --state-dir)"
            )
        return self

    def write_master_info(self, info: dict) -> None:
        atomic_write(self.master_json, json.dumps(info, indent=2) + "\n", mode=0o600)


def default_state_dir(environ: dict | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("HIVEMIND_STATE_DIR")
    return Path(base) / "dev-master" if base else Path("dev-master-state")


def resolve_state_dir(path: Path | None) -> StateDir:
    return StateDir((path or default_state_dir()).expanduser().absolute())


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str, what: str = "duration") -> float:
    """``30s``, ``10m``, ``1h``, ``2d`` or a bare number of seconds -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{what} {text!r}: give a number with s, m, h or d, e.g. 30s, 10m, 1h, 2d")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, what: str = "size") -> int:
    """``512m``, ``2g``, ``1GiB``, ``65536`` -> bytes (binary units, as Docker reads them)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"{what} {text!r}: give bytes or a number with k, m, g, e.g. 512m or 2g")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: give HOST:PORT, e.g. 127.0.0.1:50051 or 0.0.0.0:50051")
    return host.strip("[]"), int(port)
