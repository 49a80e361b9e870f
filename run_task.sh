#!/usr/bin/env bash
# Entry point inside a HiveMind task container (installed as /usr/local/bin/run_task.sh).
#
# 1. cd to the workspace (the unpacked bundle, mounted read-write at /workspace);
# 2. install the bundle's requirements.txt: from a wheelhouse shipped in the bundle
#    (wheels/, offline), else from the package index when HIVEMIND_NETWORK=bridge,
#    else skip with a note (the task has no network to install from);
# 3. run the explicit command ("$@") if given, else HIVEMIND_ENTRYPOINT (default
#    main.py: .py -> python3, .sh -> bash, else executed directly);
# 4. exit with the task's exit code (exec: the task's own status is the container's).
#
# Exit codes of our own, so the agent can name the reason:
#   97  the dependency install failed
#   98  no entry point: no command given and the entry point file is missing
# It must never need root: the container runs as an unprivileged user with a
# read-only root file system; only /workspace and /tmp are writable.
set -euo pipefail

readonly EXIT_DEPS_FAILED=97  # keep in sync with runtime/spec.py
readonly EXIT_NO_ENTRYPOINT=98

note() { printf '[hivemind] %s\n' "$*" >&2; }

workspace="${HIVEMIND_WORKSPACE:-/workspace}"
cd "$workspace"
export HIVEMIND_OUTPUT_DIR="${HIVEMIND_OUTPUT_DIR:-$workspace/output}"
mkdir -p "$HIVEMIND_OUTPUT_DIR"
# pip and friends write caches under $HOME; the root file system is read-only.
if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then export HOME=/tmp; fi
export PYTHONUNBUFFERED=1

install_requirements() {
    [ -f requirements.txt ] || return 0
    # Installed into a user site inside the workspace: the image's own Python stays
    # untouched, and Debian's "externally managed" guard does not apply there.
    export PYTHONUSERBASE="$workspace/.hivemind/deps"
    export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    if [ -n "${HIVEMIND_CA_BUNDLE:-}" ] && [ -f "${HIVEMIND_CA_BUNDLE}" ]; then
        export PIP_CERT="$HIVEMIND_CA_BUNDLE"
    fi
    local args=(install --user --progress-bar off -r requirements.txt)
    if [ -d wheels ]; then
        note "installing requirements.txt from the bundle's wheels/ (offline)"
        args+=(--no-index --find-links wheels)
    elif [ "${HIVEMIND_NETWORK:-none}" = "bridge" ]; then
        note "installing requirements.txt from the package index"
    else
        note "requirements.txt skipped: the task has no network (policy none) and the bundle has no wheels/ directory"
        return 0
    fi
    local log
    log="$(mktemp)"
    if ! python3 -m pip "${args[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        note "dependency install failed: pip could not install requirements.txt ($(tail -n 1 "$log"))"
        rm -f "$log"
        exit "$EXIT_DEPS_FAILED"
    fi
    rm -f "$log"
    note "requirements.txt installed"
}

install_requirements

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

entry="${HIVEMIND_ENTRYPOINT:-main.py}"
if [ ! -f "$entry" ]; then
    note "no entry point: $entry not found in the bundle and no command given"
    exit "$EXIT_NO_ENTRYPOINT"
fi
case "$entry" in
    *.py) exec python3 -u "$entry" ;;
    *.sh) exec bash "$entry" ;;
    *)
        if [ -x "$entry" ]; then exec "./$entry"; fi
        note "no entry point: $entry is neither .py, .sh nor executable"
        exit "$EXIT_NO_ENTRYPOINT"
        ;;
esac
