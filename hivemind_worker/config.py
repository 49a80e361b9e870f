"""Typed, frozen settings: ``worker.toml`` < environment < command-line flags.

Settings are read and validated once at start; an error names the key and where
it came from (file path, variable or flag). Nothing here touches the network or
the filesystem beyond reading the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from hivemind_worker.errors import ConfigError

DEFAULT_CONFIG_DIR = Path("/etc/hivemind-worker")
DEFAULT_STATE_DIR = Path("/var/lib/hivemind-worker")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Environment variables that set a key. The first four are the seed platform's and
# keep working; every key can also be set as HIVEMIND_<KEY upper-cased>.
LEGACY_ENV = {
    "MASTER_NODE_URL": "master_url",
    "WIREGUARD_CONFIG_PATH": "wireguard_config_path",
    "RESOURCE_REPORT_INTERVAL": "report_interval_s",
    "LOG_LEVEL": "log_level",
}


@dataclass(frozen=True)
class Settings:
    """Every setting of the worker, with its default. Units are in the names."""

    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    master_url: str | None = None  # host:port or https://host:port; enroll stores it
    wireguard_config_path: Path | None = None  # default: <config_dir>/wg0.conf
    wireguard_interface: str = "wg0"

    report_interval_s: float = 30.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_message_bytes: int = 4 * 1024 * 1024
    drain_timeout_s: float = 60.0
    # SIGTERM (systemctl stop/restart, upgrades): "handoff" leaves running tasks'
    # containers to the next agent, which re-attaches; "drain" lets them finish for up
    # to drain_timeout_s, then cancels them. SIGINT always drains (package removal).
    stop_mode: str = "handoff"

    log_level: str = "INFO"
    log_format: str = "auto"  # auto | json | text
    log_file: Path | None = None

    monitor_enabled: bool = True
    monitor_host: str = "127.0.0.1"
    monitor_port: int = 5001
    monitor_tls_cert: Path | None = None  # required when monitor_host is not loopback
    monitor_tls_key: Path | None = None

    task_image: str = "hivemind-task-runtime:local"
    # uid:gid of task processes: an id no host account has (Debian reserves 65000-65533;
    # under userns-remap it must stay below 65536). tasks/policy.py refuses tasks while
    # it names a host account, so a task's files are never a login user's files.
    task_user: str = "65100:65100"
    container_ca_bundle: Path | None = None  # CA bundle given to task containers
    max_cpus: float = 0.0  # 0 = all cores of the host
    max_memory_bytes: int = 0  # 0 = all memory of the host less a reserve
    max_gpus: int = -1  # -1 = all GPUs NVML sees
    max_concurrent_tasks: int = 8
    task_pids_limit: int = 256
    task_timeout_s: float = 3600.0
    bundle_max_bytes: int = 2 * 1024**3  # uncompressed
    bundle_max_files: int = 10_000
    result_max_bytes: int = 1024**3
    log_spool_max_bytes: int = 64 * 1024 * 1024  # per task
    pressure_cpu_percent: float = 90.0
    pressure_memory_percent: float = 90.0
    disk_high_watermark_percent: float = 85.0
    disk_low_watermark_percent: float = 70.0
    # Per task: workspace, output, log spool and result together; 0 = auto (half the
    # free space above disk_min_free_bytes when the task starts). Over it: killed.
    task_disk_limit_bytes: int = 0
    disk_min_free_bytes: int = 512 * 1024**2  # state file system below this: admit nothing
    disk_hard_min_free_bytes: int = 128 * 1024**2  # below this: stop the largest writer

    # What the master's VPN assignment may change on this host (vpn/policy.py).
    vpn_allow_full_tunnel: bool = False  # AllowedIPs beyond the VPN subnet, up to 0.0.0.0/0
    vpn_allow_dns: bool = False  # let wg-quick point the host's resolver at the master's DNS
    vpn_subnet: str = ""  # CIDR routes must stay in; "" = the node's own address's network

    # What tasks may do: the master proposes, the node decides (tasks/policy.py).
    task_networks: str = "none"  # comma-separated, of none, bridge (bridge: firewalled egress)
    task_images: str = ""  # comma-separated globs / @sha256: digests; "" = task_image only; "*" = any
    task_max_gpus: int = -1  # per task; -1 = as many as the node has
    task_max_timeout_s: float = 86400.0  # a spec asking for more is rejected, not clamped
    task_env_max_bytes: int = 64 * 1024  # all keys and values of a task's env together
    task_runtime: str = ""  # OCI runtime of networkless CPU tasks (runsc: gVisor); "" = Docker's default

    source: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def wg_config(self) -> Path:
        return self.wireguard_config_path or self.config_dir / "wg0.conf"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "worker.toml"

    def where(self, key: str) -> str:
        """Where a key's value came from, for error messages."""
        return self.source.get(key, "default")


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "source"}


def _convert(key: str, raw: Any, origin: str) -> Any:
    kind = _FIELDS[key].type
    try:
        if raw is None:
            return None
        if "Path" in kind:
            return Path(raw) if raw != "" else None
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind.startswith("int"):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("expected a whole number")
            return int(raw)
        if kind.startswith("float"):
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if raw == "" and "None" in kind:
            return None
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: {key}: {exc} (got {raw!r})") from exc


def _validate(s: Settings) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{s.where(key)}: {key}: {why}")

    if s.report_interval_s <= 0:
        raise bad("report_interval_s", "must be greater than 0 seconds")
    if s.reconnect_initial_s <= 0 or s.reconnect_max_s < s.reconnect_initial_s:
        raise bad("reconnect_max_s", "backoff needs 0 < reconnect_initial_s <= reconnect_max_s")
    if s.log_level not in LOG_LEVELS:
        raise bad("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if s.stop_mode not in ("handoff", "drain"):
        raise bad("stop_mode", 'must be "handoff" (tasks keep running for the next agent) or "drain"')
    if s.log_format not in ("auto", "json", "text"):
        raise bad("log_format", "must be auto, json or text")
    if not 0 < s.monitor_port < 65536:
        raise bad("monitor_port", "must be a TCP port, 1-65535")
    if not _is_loopback(s.monitor_host) and not (s.monitor_tls_cert and s.monitor_tls_key):
        raise bad("monitor_host", f"{s.monitor_host} is off loopback: the monitor then speaks only TLS; "
                  "set monitor_tls_cert and monitor_tls_key (PEM files), or keep monitor_host = 127.0.0.1")
    if bool(s.monitor_tls_cert) != bool(s.monitor_tls_key):
        raise bad("monitor_tls_key", "give both monitor_tls_cert and monitor_tls_key (PEM files), or neither")
    if s.max_message_bytes < 64 * 1024:
        raise bad("max_message_bytes", "must be at least 65536")
    if s.max_concurrent_tasks < 1:
        raise bad("max_concurrent_tasks", "must be at least 1")
    if not 0 < s.disk_low_watermark_percent < s.disk_high_watermark_percent <= 100:
        raise bad("disk_low_watermark_percent", "needs 0 < low < high <= 100")
    if s.task_disk_limit_bytes < 0:
        raise bad("task_disk_limit_bytes", "must be 0 (auto) or a number of bytes")
    if not 0 <= s.disk_hard_min_free_bytes <= s.disk_min_free_bytes:
        raise bad("disk_hard_min_free_bytes", "needs 0 <= disk_hard_min_free_bytes <= disk_min_free_bytes")
    networks = {n.strip() for n in s.task_networks.split(",") if n.strip()}
    if not networks or not networks <= {"none", "bridge"}:
        raise bad("task_networks", 'a comma-separated list of none and bridge, e.g. "none" or "none,bridge"')
    if not re.fullmatch(r"[0-9]+:[0-9]+", s.task_user):
        raise bad("task_user", "must be numeric uid:gid, e.g. 65100:65100 (an id no host account has)")
    if s.task_max_timeout_s <= 0 or s.task_timeout_s > s.task_max_timeout_s:
        raise bad("task_timeout_s", "needs 0 < task_timeout_s <= task_max_timeout_s")
    if s.task_env_max_bytes < 0 or s.task_max_gpus < -1:
        raise bad("task_max_gpus", "task_max_gpus must be -1 (no ceiling) or more; task_env_max_bytes >= 0")
    if not re.fullmatch(r"([a-z][a-z0-9_.-]{0,62})?", s.task_runtime):
        raise bad("task_runtime", "the name of an OCI runtime registered with Docker, e.g. runc or runsc")
    if s.vpn_subnet:
        try:
            if ipaddress.ip_network(s.vpn_subnet).is_global:
                raise ValueError("a public range is not a VPN subnet")
        except ValueError as exc:
            raise bad("vpn_subnet", f"{exc}; expected a private network like 10.88.0.0/24") from exc
    if s.master_url is not None:
        from hivemind_worker.address import parse_master_address

        try:
            parse_master_address(s.master_url)
        except ConfigError as exc:
            raise bad("master_url", str(exc)) from exc


def _is_loopback(host: str) -> bool:
    from hivemind_worker.address import is_loopback_host

    return is_loopback_host(host)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    read_file: bool = True,
) -> Settings:
    """Build settings from the file, then the environment, then ``overrides`` (flags).
    ``read_file=False``: without the file (the doctor, when the file is what is broken)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source: dict[str, str] = {}

    def put(key: str, raw: Any, origin: str) -> None:
        values[key] = _convert(key, raw, origin)
        source[key] = origin

    config_dir = Path(env.get("HIVEMIND_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    state_dir = env.get("HIVEMIND_STATE_DIR")
    put("config_dir", config_dir, "HIVEMIND_CONFIG_DIR")
    if state_dir:
        put("state_dir", state_dir, "HIVEMIND_STATE_DIR")

    path = config_file or config_dir / "worker.toml"
    if read_file and (config_file is not None or path.exists()):
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such config file") from exc
        except PermissionError as exc:
            raise ConfigError(f"{path}: cannot read it (permission denied); run as root or fix its mode") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        for key, raw in data.items():
            if key not in _FIELDS or key in ("config_dir",):
                raise ConfigError(f"{path}: unknown key {key!r}; see README.md 'Configuration'")
            put(key, raw, str(path))

    for var, key in LEGACY_ENV.items():
        if env.get(var):
            put(key, env[var], var)
    for key in _FIELDS:
        var = "HIVEMIND_" + key.upper()
        if var in env and var not in ("HIVEMIND_CONFIG_DIR", "HIVEMIND_STATE_DIR"):
            put(key, env[var], var)

    for key, raw in (overrides or {}).items():
        if raw is not None:
            put(key, raw, "--" + key.replace("_", "-"))

    settings = Settings(**values, source=source)
    _validate(settings)
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy with some values changed (for tests and SIGHUP reloads)."""
    new = dataclasses.replace(settings, **changes)
    _validate(new)
    return new


def changed_keys(old: Settings, new: Settings) -> set[str]:
    """The keys whose values differ (a reload says which of them took effect)."""
    return {key for key in _FIELDS if getattr(old, key) != getattr(new, key)}
