#!/usr/bin/env bash
# Build (once) a Debian root file system that boots systemd under systemd-nspawn,
# as a tarball: the system tests copy it per test host (tests/support/nspawn.py).
#
# Usage: [DEBIAN_RELEASE=bookworm|trixie] build-test-rootfs.sh DEST.tar [EXTRA_PACKAGES_COMMA_SEPARATED]
#
# Holds a minimal Debian plus systemd, python3 + venv, iproute2, WireGuard tools and
# ca-certificates - what install.sh / the .deb expect from the mirror - so a booted
# host needs no network. Docker is not installed: tests bind the host's socket.
# The worker is never in it: each test installs it itself.
set -euo pipefail

dest=${1:?usage: build-test-rootfs.sh DEST.tar [EXTRA,PACKAGES]}
extra=${2:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
release=${DEBIAN_RELEASE:-bookworm}   # Debian 12; trixie is Debian 13
case "$release" in bookworm|trixie) ;; *) echo "build-test-rootfs.sh: DEBIAN_RELEASE=$release: bookworm or trixie" >&2; exit 2 ;; esac
packages=systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,ca-certificates,wireguard-tools,wireguard-go
[ -n "$extra" ] && packages="$packages,$extra"

[ "$(id -u)" = 0 ] || { echo "build-test-rootfs.sh: run as root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-test-rootfs.sh: apt-get install debootstrap" >&2; exit 1; }
[ -f "$dest" ] && { echo "$dest exists"; exit 0; }

tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp" "$tmp.tar"' EXIT
mkdir -p "$(dirname "$dest")"
debootstrap --variant=minbase --include="$packages" "$release" "$tmp" "$mirror"

# The host takes its name from the machine name; nothing waits for a network that
# nspawn without --private-network never configures.
rm -f "$tmp/etc/hostname"
rm -f "$tmp"/etc/systemd/system/multi-user.target.wants/networking.service
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/locale/*
tar --numeric-owner -C "$tmp" -cf "$tmp.tar" .
mv "$tmp.tar" "$dest"
echo "built $dest"
