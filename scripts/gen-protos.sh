#!/usr/bin/env bash
# Regenerates the stubs in hivemind_worker/proto/ from protos/ (needs grpcio-tools).
# protos/ mirrors the package path so that the generated modules import each other
# as `hivemind_worker.proto.worker_pb2`. Usage: scripts/gen-protos.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
python -m grpc_tools.protoc -Iprotos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    protos/hivemind_worker/proto/worker.proto
