#!/usr/bin/env bash
# The README's test command: installs what the tests need (apt packages, the Docker
# engine, a venv), builds the task image (cached), and runs the whole suite.
# Usage: sudo scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

images/task-runtime/build-from-debian.sh hivemind-task-runtime:local

mkdir -p test-artifacts
# Given test paths: just those. The whole suite (.ci/run): the fault drills
# (tests/faults) run in a second pytest beside the rest, four at a time (each has its
# own master, node, ports and engine; most of their time is waiting out an outage, not
# CPU); their report follows the rest's, in test-artifacts/faults.log.
for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then exec .venv/bin/pytest "$@"; fi
done
.venv/bin/pytest tests/faults -n 4 "$@" >test-artifacts/faults.log 2>&1 &
faults=$!
rc=0
.venv/bin/pytest --ignore=tests/faults "$@" || rc=$?
faults_rc=0
wait "$faults" || faults_rc=$?
echo "== fault drills (tests/faults, exit $faults_rc) =="
cat test-artifacts/faults.log
[ "$rc" -ne 0 ] && exit "$rc"
exit "$faults_rc"
