import logging
import random

from hivemind_worker.control.session import backoff_delay
from hivemind_worker.logs import RedactingFilter, redact


def test_secrets_are_redacted():
    assert "s3cr3t" not in redact("token=s3cr3t and more")
    assert "abcdef" not in redact('{"node_credential": "abcdefgh"}')
    assert "hmt_" not in redact("using hmt_AbCdEf012345")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "enroll with %s", ("hmc_0123456789abcdef",), None)
    RedactingFilter().filter(record)
    assert "0123456789" not in record.getMessage()


def test_backoff_is_capped_and_jittered():
    rng = random.Random(7)
    delays = [backoff_delay(n, 1.0, 30.0, rng) for n in range(12)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert delays[-1] >= 15.0  # half the cap is always waited once it is reached
    assert len({round(d, 3) for d in delays[6:]}) > 1  # jitter: not one wave


def test_proto_stubs_are_reproducible(tmp_path):
    """The committed stubs are exactly what scripts/gen-protos.sh makes."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{repo / 'protos'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(repo / "protos/hivemind_worker/proto/worker.proto")],
        check=True,
    )
    for name in ("worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py"):
        fresh = (tmp_path / "hivemind_worker/proto" / name).read_text()
        assert fresh == (repo / "hivemind_worker/proto" / name).read_text(), f"{name} is stale: run scripts/gen-protos.sh"
