#!/usr/bin/env bash
# Build (once) the cached Debian 12 root file system the packaging tests boot.
#
# Usage: build-rootfs.sh DEST
#
# It holds what a minimal fresh Debian host has plus the distribution packages that
# install.sh, the .deb and the Ansible role would install from the mirror (so the
# booted hosts need no network to the mirror during a test run): systemd, python3 +
# venv, WireGuard tools, iproute2, ca-certificates, and openssh-server + python3-apt
# for Ansible. Docker is not installed: the tests bind the host's Docker socket, which
# is the "a Docker engine is already there" case of install.sh.
# It must not contain the worker: every test installs that itself.
set -euo pipefail

dest=${1:?usage: build-rootfs.sh DEST}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,iproute2,ca-certificates,wireguard-tools,wireguard-go,openssh-server

[ "$(id -u)" = 0 ] || { echo "build-rootfs.sh: run as root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-rootfs.sh: apt-get install debootstrap" >&2; exit 1; }
[ -d "$dest" ] && { echo "$dest exists"; exit 0; }

tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$dest")"
debootstrap --variant=minbase --include="$packages" bookworm "$tmp" "$mirror"

# Each test host gets its name from the machine name, and no SSH server until a test
# gives it its own loopback port (the hosts share the host's network).
rm -f "$tmp/etc/hostname"
rm -f "$tmp"/etc/systemd/system/multi-user.target.wants/ssh.service "$tmp"/etc/systemd/system/sshd.service
# Nothing in the booted host waits for a network that nspawn without --private-network
# never configures.
rm -f "$tmp"/etc/systemd/system/multi-user.target.wants/networking.service
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/locale/*
# A fresh host has package lists; keep the index files small but present so
# `apt-get install` of an already-installed package succeeds offline.
mv "$tmp" "$dest"
trap - EXIT
echo "built $dest"
