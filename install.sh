#!/usr/bin/env bash
# Install the HiveMind worker on this host (tested: Debian 12 and 13; Ubuntu 22.04+), as root:
#
#   sudo ./install.sh                                   install; prints the next step
#   sudo ./install.sh --master HOST:PORT --token TOKEN --ca-hash sha256:HEX
#                                                       install, enroll, start the service
#   sudo ./install.sh --uninstall                       remove; keeps the node's identity
#   sudo ./install.sh --uninstall --purge               remove everything
#
# Options:
#   --master HOST:PORT   master to enroll with (or HIVEMIND_MASTER)
#   --token TOKEN        enrollment token (or HIVEMIND_ENROLL_TOKEN, which keeps it
#                        out of the process list)
#   --ca-hash sha256:HEX the master CA's hash (`hivemind-worker dev-master ca-hash`)
#   --wheelhouse DIR     install Python packages only from DIR (offline hosts);
#                        PIP_INDEX_URL, PIP_CERT and other PIP_* variables work too
#   --reinstall          reinstall the worker even when this version is installed
#   --uninstall [--purge]
#
# It installs from the distribution what the worker needs (a Docker engine unless one
# is there, WireGuard tools, wireguard-go when the kernel has no WireGuard, Python's
# venv), puts the worker from this directory into the virtual environment
# /opt/hivemind-worker, links /usr/local/bin/hivemind-worker, and runs
# `hivemind-worker install` (service user, directories, systemd unit). A second run
# changes nothing.
set -euo pipefail

VENV=/opt/hivemind-worker
LINK=/usr/local/bin/hivemind-worker
CONFIG_DIR=/etc/hivemind-worker
UNIT=hivemind-worker.service
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

master=${HIVEMIND_MASTER:-}
token=${HIVEMIND_ENROLL_TOKEN:-}
ca_hash=${HIVEMIND_CA_HASH:-}
wheelhouse=""
reinstall=0
uninstall=0
purge=0
changed=0
restart=0

say() { echo "install.sh: $*"; }
change() { changed=1; say "$*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --master) master=${2:?--master needs HOST:PORT}; shift 2 ;;
        --token) token=${2:?--token needs a value}; shift 2 ;;
        --ca-hash) ca_hash=${2:?--ca-hash needs sha256:HEX}; shift 2 ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift 2 ;;
        --reinstall) reinstall=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$purge" = 1 ] && [ "$uninstall" = 0 ] && die "--purge goes with --uninstall"
if [ -n "$token$master$ca_hash" ] && { [ -z "$token" ] || [ -z "$master" ] || [ -z "$ca_hash" ]; }; then
    die "enrolling needs all of --master HOST:PORT, --token TOKEN and --ca-hash sha256:HEX"
fi
[ -z "$wheelhouse" ] || [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse: no such directory"
[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"

# --- the host -------------------------------------------------------------------
[ -r /etc/os-release ] || die "cannot identify the OS (/etc/os-release is missing); supported: Debian 12+, Ubuntu 22.04+"
# shellcheck disable=SC1091
. /etc/os-release
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
case "${ID:-}" in
    debian) version_ge "${VERSION_ID:-0}" 12 || die "unsupported OS: ${PRETTY_NAME:-Debian ?}; needs Debian 12 or newer" ;;
    ubuntu) version_ge "${VERSION_ID:-0}" 22.04 || die "unsupported OS: ${PRETTY_NAME:-Ubuntu ?}; needs Ubuntu 22.04 or newer" ;;
    *) die "unsupported OS: ${PRETTY_NAME:-${ID:-unknown}}; supported: Debian 12+, Ubuntu 22.04+" ;;
esac
[ -d /run/systemd/system ] || die "systemd is not running as PID 1 here; the worker runs as a systemd service"

# A removal drains whatever stop_mode says (SIGINT): running tasks finish, or are
# cancelled at drain_timeout_s and reported, before the unit stops. The wait: the
# configured drain_timeout_s (worker.toml, then the unit's Environment=) plus the unit's
# stop margin (as the .deb's prerm does); 150 s when the settings cannot be read.
drain_service() {
    systemctl is-active --quiet "$UNIT" 2>/dev/null || return 0
    local limit
    limit=$(HIVEMIND_UNIT_ENVIRONMENT=$(systemctl show -P Environment "$UNIT" 2>/dev/null || true) \
        "$VENV/bin/python" -B -c 'import math, os, shlex
from hivemind_worker.config import load_settings
from hivemind_worker.systemd.unit import DRAIN_MARGIN_S
env = dict(os.environ)
env.update(item.split("=", 1) for item in shlex.split(env.pop("HIVEMIND_UNIT_ENVIRONMENT", "")) if "=" in item)
print(math.ceil(load_settings(environ=env).drain_timeout_s) + DRAIN_MARGIN_S)' 2>/dev/null) || limit=150
    say "draining running tasks before the removal (at most ${limit} s)"
    systemctl kill --kill-whom=main --signal=SIGINT "$UNIT" || return 0
    local waited=0   # MainPID, not is-active: a draining agent's unit reads "deactivating"
    while [ "$(systemctl show -P MainPID "$UNIT")" != 0 ] && [ "$waited" -lt "$limit" ]; do
        sleep 1; waited=$((waited + 1))
    done
}

uninstall_worker() {
    drain_service
    if [ -x "$VENV/bin/hivemind-worker" ]; then
        if [ "$purge" = 1 ]; then "$VENV/bin/hivemind-worker" install --uninstall --purge
        else "$VENV/bin/hivemind-worker" install --uninstall; fi
    else
        systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
        rm -f "/etc/systemd/system/$UNIT"; systemctl daemon-reload
        if [ "$purge" = 1 ]; then
            rm -rf "$CONFIG_DIR" /var/lib/hivemind-worker
            ! getent passwd hivemind-worker >/dev/null || userdel hivemind-worker
        fi
    fi
    [ "$(readlink "$LINK" 2>/dev/null)" = "$VENV/bin/hivemind-worker" ] && rm -f "$LINK"
    rm -rf "$VENV"
    say "removed $VENV and $LINK"
    [ "$purge" = 1 ] || say "kept $CONFIG_DIR (node identity) and /var/lib/hivemind-worker; --uninstall --purge deletes them"
}

if dpkg-query -W -f='${Status}' hivemind-worker 2>/dev/null | grep -q "install ok installed"; then
    die "the hivemind-worker Debian package manages this host; use apt (apt-get install/remove hivemind-worker) instead of install.sh"
fi
if [ "$uninstall" = 1 ]; then uninstall_worker; exit 0; fi

# --- distribution packages ----------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

python=/usr/bin/python3
need=(ca-certificates iproute2 wireguard-tools)
if [ -x /usr/bin/python3 ] && py_ok /usr/bin/python3; then
    need+=(python3 python3-venv)
else
    # Ubuntu 22.04's python3 is 3.10; its python3.11 is in universe.
    python=/usr/bin/python3.11
    need+=(python3.11 python3.11-venv)
fi
docker_present() {
    command -v dockerd >/dev/null || [ -S /run/docker.sock ] || [ -S /var/run/docker.sock ] \
        || systemctl cat docker.service >/dev/null 2>&1
}
docker_present || need+=(docker.io)
kernel_wireguard() {
    [ -d /sys/module/wireguard ] || modinfo wireguard >/dev/null 2>&1
}
kernel_wireguard || need+=(wireguard-go)

missing=()
for pkg in "${need[@]}"; do installed "$pkg" || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing from the distribution: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    # apt-get update only warns (exit 0) when a mirror cannot be reached.
    if ! apt-get update -qq >"$apt_log" 2>&1 || grep -qE '^(W|E): (Failed to fetch|Some index files failed)' "$apt_log"; then
        cat "$apt_log" >&2; rm -f "$apt_log"
        die "cannot reach the package mirror (apt-get update failed); check the network or proxy, or preinstall: ${missing[*]}"
    fi
    rm -f "$apt_log"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed; run it by hand to see why"
    change "installed ${missing[*]}"
else
    say "distribution packages present: ${need[*]}"
fi
py_ok "$python" || die "$python is missing or older than 3.11"

# --- the worker's virtual environment -------------------------------------------------
want=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n1)
[ -n "$want" ] || die "$SRC/pyproject.toml has no version; run install.sh from the worker's source tree"
have=""
if [ -x "$VENV/bin/hivemind-worker" ]; then
    have=$("$VENV/bin/hivemind-worker" --version 2>/dev/null | awk '{print $NF}') || true
fi
venv_python=$(readlink -f "$VENV/bin/python3" 2>/dev/null || true)

if [ "$have" = "$want" ] && [ "$reinstall" = 0 ] && [ "$venv_python" = "$(readlink -f "$python")" ]; then
    say "hivemind-worker $want is already installed in $VENV"
else
    if [ ! -x "$VENV/bin/python3" ] || [ "$venv_python" != "$(readlink -f "$python")" ]; then
        rm -rf "$VENV"
        "$python" -m venv "$VENV" || die "cannot create the virtual environment $VENV with $python"
    fi
    pip_args=(--disable-pip-version-check --quiet)
    [ -n "$wheelhouse" ] && pip_args+=(--no-index --find-links "$wheelhouse")
    # Build from a scratch copy: setuptools writes build/ and *.egg-info next to the
    # sources, which may be read-only or belong to someone else.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=tests -cf - . | tar -C "$build" -xf -
    # Dependencies: exactly the .deb's, hash-checked (pip as root runs no code it was
    # not pinned to). Then the worker alone, built with the pinned setuptools/wheel
    # already in the venv (no build isolation: nothing unpinned is fetched for it).
    # One pinned set per Python (compiled wheels differ): 3.11 on Debian 12, 3.13 on 13.
    pyver=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
    reqs="$SRC/packaging/debian/requirements-py$pyver.txt"
    [ "$pyver" = 311 ] && reqs="$SRC/packaging/debian/requirements.txt"
    [ -r "$reqs" ] || die "$reqs is missing: no pinned dependencies for this Python ($("$python" -V)); supported: Debian 12 (3.11) and 13 (3.13), or generate them with scripts/build-deb.sh --lock"
    "$VENV/bin/pip" install "${pip_args[@]}" --require-hashes -r "$reqs" \
        || die "pip could not install the pinned dependencies ($reqs, hash-checked, for amd64; regenerate with scripts/build-deb.sh --lock elsewhere) into $VENV; offline hosts: --wheelhouse DIR, behind a proxy: PIP_CERT=/etc/ssl/certs/ca-certificates.crt or PIP_INDEX_URL=..."
    "$VENV/bin/pip" install "${pip_args[@]}" --no-deps --no-build-isolation --force-reinstall "$build" \
        || die "pip could not install the worker into $VENV"
    change "installed hivemind-worker $want into $VENV${have:+ (was $have)}"
    restart=1
fi

if [ "$(readlink "$LINK" 2>/dev/null)" != "$VENV/bin/hivemind-worker" ]; then
    mkdir -p "$(dirname "$LINK")"
    ln -sfn "$VENV/bin/hivemind-worker" "$LINK"
    change "linked $LINK"
fi

# --- service user, directories, unit -------------------------------------------------
setup_log=$("$VENV/bin/hivemind-worker" install) || die "hivemind-worker install failed (see above)"
while IFS= read -r line; do echo "  $line"; done <<< "$setup_log"
if echo "$setup_log" | grep -qE '^(created|wrote|added|made)'; then changed=1; fi
if echo "$setup_log" | grep -q '^wrote'; then restart=1; fi

# --- enrollment and the service ------------------------------------------------------
if [ -e "$CONFIG_DIR/node.json" ]; then
    [ -n "$token" ] && say "already enrolled ($CONFIG_DIR/node.json exists); not enrolling again"
elif [ -n "$token" ]; then
    # The token travels in the environment, not on a command line others can read.
    HIVEMIND_ENROLL_TOKEN=$token "$VENV/bin/hivemind-worker" enroll --master "$master" --ca-hash "$ca_hash" \
        || die "enrollment failed (see above); fix it and run install.sh again"
    change "enrolled with $master"
fi

if [ -e "$CONFIG_DIR/node.json" ]; then
    systemctl is-enabled --quiet "$UNIT" || { systemctl enable --quiet "$UNIT"; change "enabled $UNIT"; }
    if ! systemctl is-active --quiet "$UNIT"; then
        systemctl start "$UNIT" || die "$UNIT did not start: journalctl -u hivemind-worker -n 50"
        change "started $UNIT"
    elif [ "$restart" = 1 ]; then
        # SIGTERM: running tasks keep running for the new agent (stop_mode "handoff",
        # the default) or drain first (stop_mode "drain").
        systemctl restart "$UNIT"
        change "restarted $UNIT on the new installation (running tasks are handed over, or drained under stop_mode = \"drain\")"
    fi
    say "the worker runs as $UNIT: systemctl status hivemind-worker; journalctl -u hivemind-worker"
else
    say "next: hivemind-worker enroll --master HOST:PORT --token TOKEN --ca-hash sha256:HEX && systemctl start hivemind-worker"
fi
if [ "$changed" = 0 ]; then say "already installed; nothing changed"; else say "done"; fi
