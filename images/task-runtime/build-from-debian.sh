#!/usr/bin/env bash
# Build the default task image without a registry: debootstrap a minimal Debian
# bookworm with Python, `docker import` it as a base, then build ./Dockerfile
# FROM that base with no network. The result is equivalent to the registry image.
#
#   images/task-runtime/build-from-debian.sh [TAG]     (default hivemind-task-runtime:local)
#
# Skipped when TAG exists and was built from the current Dockerfile and run_task.sh.
# The root file system is cached as a tarball (HIVEMIND_ROOTFS_CACHE, default
# /var/cache/hivemind-worker) so a rebuild takes seconds. Needs root, debootstrap
# and a running Docker engine; the mirror is HIVEMIND_DEBIAN_MIRROR.
set -euo pipefail

tag="${1:-hivemind-task-runtime:local}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${HIVEMIND_ROOTFS_CACHE:-/var/cache/hivemind-worker}"
mirror="${HIVEMIND_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
packages=python3,python3-pip,python3-venv,ca-certificates
base_tag="hivemind-task-runtime-base:$suite"
rootfs_tar="$cache/task-runtime-$suite-rootfs.tar.gz"

say() { printf 'build-from-debian: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker CLI not found; install docker.io"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer; start dockerd"

# One build at a time per host: parallel test sessions wait instead of racing.
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9

# The image's identity is its recipe: rebuild when the Dockerfile or run_task.sh changed.
source_hash="$(cat "$here/Dockerfile" "$repo/run_task.sh" | sha256sum | cut -c1-16)"
existing="$(docker image inspect --format '{{ index .Config.Labels "hivemind.task-runtime.source" }}' "$tag" 2>/dev/null || true)"
if docker image inspect "$tag" >/dev/null 2>&1; then
    if [ -z "$existing" ] || [ "$existing" = "<no value>" ] || [ "$existing" = "$source_hash" ]; then
        say "$tag exists; skipped"
        exit 0
    fi
    say "$tag is from an older recipe ($existing); rebuilding"
fi

if ! docker image inspect "$base_tag" >/dev/null 2>&1; then
    if [ ! -s "$rootfs_tar" ]; then
        command -v debootstrap >/dev/null || die "debootstrap not found; apt-get install -y debootstrap"
        [ "$(id -u)" = 0 ] || die "debootstrap needs root"
        root="$(mktemp -d "$cache/rootfs.XXXXXX")"
        trap 'rm -rf "$root"' EXIT
        say "debootstrap $suite into $root (about a minute)"
        debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $cache/debootstrap.log"
        # What a task image does not need: package caches, docs, man pages, locales.
        rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
            "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
            "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
        find "$root/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} +
        tar -C "$root" --numeric-owner -czf "$rootfs_tar.part" .
        mv "$rootfs_tar.part" "$rootfs_tar"
        rm -rf "$root"
        trap - EXIT
    fi
    say "importing $rootfs_tar as $base_tag"
    docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' "$rootfs_tar" "$base_tag" >/dev/null
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/Dockerfile"
cp "$repo/run_task.sh" "$ctx/run_task.sh"
say "building $tag FROM $base_tag"
docker build --quiet --network none --build-arg "BASE=$base_tag" \
    --label "hivemind.task-runtime.source=$source_hash" -t "$tag" "$ctx" >/dev/null \
    || die "docker build failed"
say "built $tag"
