"""The systemd unit of the worker, rendered for the executable actually installed.

``install.sh`` puts a venv somewhere, the .deb puts one under /opt: the unit must
name the real executable, so the installer renders it here. The shipped
``packaging/systemd/hivemind-worker.service`` is ``render_unit()`` with defaults
(a test keeps them equal). This module only makes text; it writes nothing.
"""

from __future__ import annotations

import shlex
from pathlib import Path

UNIT_NAME = "hivemind-worker.service"
DEFAULT_EXEC = Path("/opt/hivemind-worker/bin/hivemind-worker")
DEFAULT_USER = "hivemind-worker"
WATCHDOG_SEC = 30
DRAIN_MARGIN_S = 30

_TEMPLATE = """\
# hivemind-worker: the worker node of the HiveMind platform.
# Rendered by `hivemind-worker install`; edit with `systemctl edit hivemind-worker`.
#
# The daemon does not bring the VPN up: wg-quick needs CAP_NET_ADMIN, which this
# unit does not grant. `sudo hivemind-worker up` (or `systemctl enable --now
# wg-quick@wg0` with {config_dir}/wg0.conf linked into /etc/wireguard) does that.
[Unit]
Description=HiveMind worker node
Wants=network-online.target docker.service
After=network-online.target docker.service wg-quick@wg0.service
# Start only once the node is enrolled (`hivemind-worker enroll`).
ConditionPathExists={config_dir}/node.json
StartLimitIntervalSec=600
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start} run
# SIGHUP: RELOADING=1, re-read settings. The shell's built-in kill: no procps needed.
ExecReload=/bin/sh -c 'kill -HUP "$MAINPID"'
# The daemon pings from its event loop only while it and its subsystems are
# healthy; a wedged loop is killed (SIGABRT) and restarted.
WatchdogSec={watchdog_sec}
Restart=on-failure
RestartSec=5
# Exit codes a restart cannot mend (hivemind_worker/errors.py): a bad setting (2),
# not enrolled (3), the master revoked this node (6). The journal says which.
RestartPreventExitStatus=2 3 6
TimeoutStartSec=120
# SIGTERM (stop, restart, upgrade): under stop_mode "handoff" (the default) the agent
# exits at once and running tasks keep running for the next agent; under "drain" it
# drains for up to drain_timeout_s ({drain_s}s at install). SIGINT always drains. While it
# drains it extends this timeout (EXTEND_TIMEOUT_USEC, 30 s at a time), so a larger
# drain_timeout_s set later is not cut short; a daemon that stops asking is SIGKILLed.
# KillMode=mixed: SIGTERM to the main process only, SIGKILL to all at the end.
TimeoutStopSec={stop_s}
KillMode=mixed
User={user}
Group={group}
SupplementaryGroups=docker
StateDirectory=hivemind-worker
StateDirectoryMode=0750
UMask=0027
Environment=PYTHONUNBUFFERED=1

# Sandboxing. The file system is read-only but for the state directory (no
# ConfigurationDirectory=: that would make {config_dir} writable; only enrollment,
# run by an operator, writes there). The Docker socket stays reachable: connecting
# to a socket needs no writable mount.
# No PrivateDevices/DeviceAllow/ProtectClock: NVML needs /dev/nvidia*.
ProtectSystem=strict
ReadWritePaths={state_dir}
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def render_unit(
    exec_path: Path = DEFAULT_EXEC,
    user: str = DEFAULT_USER,
    drain_timeout_s: float = 60.0,
    config_dir: Path = Path("/etc/hivemind-worker"),
    state_dir: Path = Path("/var/lib/hivemind-worker"),
    watchdog_sec: int = WATCHDOG_SEC,
) -> str:
    """The unit text. ``exec_path`` is the ``hivemind-worker`` executable."""
    drain_s = int(drain_timeout_s + 0.999)
    return _TEMPLATE.format(
        exec_start=shlex.quote(str(exec_path)),
        user=user,
        group=user,
        config_dir=config_dir,
        state_dir=state_dir,
        watchdog_sec=watchdog_sec,
        drain_s=drain_s,
        stop_s=drain_s + DRAIN_MARGIN_S,
    )
