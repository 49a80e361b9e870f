#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian 12 host (as root) and starts
# the Docker engine. Idempotent; safe to run on a machine that already has it all.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "error: run as root (sudo $0)" >&2; exit 1; }

packages=(
    docker.io iptables ca-certificates                 # the Docker engine
    runsc                                              # gVisor, on a private engine (test_gvisor.py)
    wireguard-tools wireguard-go iproute2              # real tunnels between namespaces
    debootstrap systemd-container                      # root file systems, booted systemd
    prometheus                                         # promtool
    chromium                                           # the monitor in a real browser
    python3-venv python3-pip
    dh-virtualenv dh-python debhelper lintian build-essential   # the Debian package
    openssh-client shellcheck dpkg-dev
    reprepro gnupg                                     # the signed APT repository
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd"
    setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
