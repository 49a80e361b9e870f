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
exec .venv/bin/pytest "$@"
