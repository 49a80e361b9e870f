#!/usr/bin/env bash
# The README's demo command: installs what the demo needs (Docker engine, a venv),
# builds the task image once, and runs `hivemind-worker demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: run as root (sudo $0): the demo starts Docker" >&2; exit 1; }
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker.io iptables ca-certificates debootstrap python3-venv python3-pip
fi
if ! docker info >/dev/null 2>&1; then
    setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
images/task-runtime/build-from-debian.sh hivemind-task-runtime:local
exec .venv/bin/hivemind-worker demo "$@"
