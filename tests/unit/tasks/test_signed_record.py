"""The usage record the result step signs (tasks/result.py): every field from the row,
the limits and the archive; figures the meter did not take left out; written beside
the archive and read back byte for byte; a result spooled before records existed gets
one at upload time with the outcome its archive states; the node's usage key on disk
(identity.py): made once, refused when others may read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hivemind_worker import usage
from hivemind_worker.errors import ConfigError
from hivemind_worker.fsutil import sha256_file
from hivemind_worker.identity import ensure_usage_key, load_usage_key, new_usage_key, usage_key_path
from hivemind_worker.tasks.archive import make_result_archive
from hivemind_worker.tasks.journal import TaskRow
from hivemind_worker.tasks.model import Resources, TaskRequest, TaskStatus
from hivemind_worker.tasks.result import UsageSeal, ensure_usage, read_usage, seal_usage, usage_path, usage_record
from hivemind_worker.tasks.usage import GpuUse, MeteredUsage

KEY = Ed25519PrivateKey.generate()
PUB = usage.public_key_bytes(KEY)
USED = MeteredUsage(2.5, 300 << 20, 120 << 20, gpus=(GpuUse(0, "GPU-a", 1.25, 42.5), GpuUse(1, "GPU-b", 0.5, None)),
                    cpu_energy_j=12.0, samples=7)


def row(**changes) -> TaskRow:
    req = TaskRequest("t1", bundle_size=10, bundle_sha256="AB" * 32, attempt=2, resources=Resources(1500, 512 << 20, 2))
    base = TaskRow("t1", req, TaskStatus.EXITED, reason="exited with code 0", exit_code=0, started_ms=1_000,
                   ended_ms=61_000, usage=USED, image_digest="sha256:" + "c" * 64)
    return base.with_(**changes)


def seal(r: TaskRow) -> UsageSeal:
    return UsageSeal(r, "node-9", Resources(1500, 512 << 20, 2), lambda rec: usage.sign(rec, KEY))


def test_the_record_has_every_field_and_verifies() -> None:
    record = usage_record(seal(row()), "exited", "exited with code 0", 4096, "d" * 64)
    assert record == {
        "version": 1, "node_id": "node-9", "task_id": "t1", "attempt": 2, "image_digest": "sha256:" + "c" * 64,
        "bundle_sha256": "ab" * 32, "result_sha256": "d" * 64, "result_bytes": 4096, "state": "exited",
        "exit_code": 0, "reason": "exited with code 0", "started_ms": 1_000, "ended_ms": 61_000,
        "cpu_seconds": 2.5, "memory_peak_bytes": 300 << 20, "memory_avg_bytes": 120 << 20,
        "cpu_limit_millicores": 1500, "memory_limit_bytes": 512 << 20,
        "gpus": [{"index": 0, "uuid": "GPU-a", "gpu_seconds": 1.25, "energy_j": 42.5},
                 {"index": 1, "uuid": "GPU-b", "gpu_seconds": 0.5}],  # no energy reported: left out
        "cpu_energy_j": 12.0,
    }
    assert usage.verify(usage.sign(record, KEY), PUB) == record


def test_what_was_not_measured_is_left_out_and_a_task_that_never_ran_used_nothing() -> None:
    record = usage_record(seal(row(usage=None, started_ms=0, ended_ms=0, exit_code=0, image_digest="")),
                          "cancelled", "cancelled before it started", 100, "e" * 64)
    assert "cpu_energy_j" not in record and record["gpus"] == []
    assert (record["cpu_seconds"], record["memory_peak_bytes"], record["exit_code"]) == (0.0, 0, None)
    assert record["bundle_sha256"] == "ab" * 32
    no_bundle = usage_record(seal(row(request=TaskRequest("t1"))), "exited", "", 1, "f" * 64)
    assert no_bundle["bundle_sha256"] == ""
    usage.verify(usage.sign(record, KEY), PUB)  # still a valid record


def test_written_beside_the_archive_and_read_back_exactly(tmp_path: Path) -> None:
    result = tmp_path / "result.tar.gz"
    result.write_bytes(b"archive")
    signed = seal_usage(result, seal(row(reason="caf\u00e9 \u2603")), "exited", "caf\u00e9 \u2603", 7, "a" * 64)
    assert usage_path(result) == tmp_path / "result.tar.gz.usage"
    assert usage_path(result).stat().st_mode & 0o777 == 0o600
    back = read_usage(result)
    assert back == signed
    assert usage.verify(back, PUB)["reason"] == "caf\u00e9 \u2603"
    assert read_usage(tmp_path / "other.tar.gz") is None


def test_a_result_spooled_before_records_gets_one_at_upload(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("x")
    result = tmp_path / "result.tar.gz"
    exit_info = {"task_id": "t1", "status": "timed_out", "exit_code": 137, "reason": "timed out after 5 s"}
    size, sha = make_result_archive(out, None, exit_info, result, 1 << 20)
    r = row(status=TaskStatus.UPLOADING, reason="timed out after 5 s", exit_code=137)
    ensure_usage(result, seal(r))
    record = usage.verify(read_usage(result), PUB)
    assert (record["state"], record["reason"], record["exit_code"]) == ("timed_out", "timed out after 5 s", 137)
    assert (record["result_sha256"], record["result_bytes"]) == (sha256_file(result), size) == (sha, size)
    before = usage_path(result).read_bytes()
    ensure_usage(result, seal(r))  # already there: left as it is
    assert usage_path(result).read_bytes() == before
    for damaged in (b"not hex\n{}", b""):  # damaged, or emptied by a crash: signed again
        usage_path(result).write_bytes(damaged)
        ensure_usage(result, seal(r))
        usage.verify(read_usage(result), PUB)


def test_usage_key_made_once_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    key, made = ensure_usage_key(etc, state)
    path = key.path
    assert (path, made) == (usage_key_path(etc), True)
    assert path.stat().st_mode & 0o777 == 0o600
    again, made2 = ensure_usage_key(etc, state)
    assert (again.path, made2) == (path, False)
    assert again.public == key.public == usage.public_key_bytes(again.private())
    record = usage_record(seal(row()), "exited", "", 1, "a" * 64)
    assert usage.verify(again.sign(record), key.public) == record
    os.chmod(path, 0o640)  # root's, the service group reads it: as node.json
    load_usage_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        load_usage_key(path)
    os.chmod(path, 0o600)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:1] + lines[2:]))  # the private half damaged
    with pytest.raises(ConfigError, match="not a readable private key"):
        load_usage_key(path).private()
    other, data = new_usage_key(path)
    path.write_bytes(f"public: {key.public.hex()}\n".encode() + data.split(b"\n", 1)[1])  # another key's PEM
    with pytest.raises(ConfigError, match="does not match"):
        load_usage_key(path).sign(record)


def test_the_idle_daemon_learns_the_public_half_without_cryptography(tmp_path: Path) -> None:
    """cryptography costs about 10 MB: the hello's key comes from the file's first line."""
    key, _ = ensure_usage_key(tmp_path / "etc", tmp_path / "state")
    code = ("import sys; from pathlib import Path; from hivemind_worker.identity import ensure_usage_key; "
            "k, made = ensure_usage_key(Path(sys.argv[1]), Path(sys.argv[2])); "
            "print(k.public.hex(), made, any(m.startswith('cryptography') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "etc"), str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[3])
    assert out.stdout.split() == [key.public.hex(), "False", "False"], out.stderr


def test_usage_key_goes_to_the_state_dir_when_the_config_dir_cannot_be_written(tmp_path: Path) -> None:
    """The daemon runs as the service user, the config dir is root's (and read-only under
    the unit's ProtectSystem): here a config dir that cannot be made stands for both."""
    (tmp_path / "not-a-dir").write_text("")
    etc, state = tmp_path / "not-a-dir" / "etc", tmp_path / "state"
    key, made = ensure_usage_key(etc, state)
    assert (key.path, made) == (usage_key_path(state), True)
    assert key.path.stat().st_mode & 0o777 == 0o600
    again, made = ensure_usage_key(etc, state)
    assert (again.path, again.public, made) == (key.path, key.public, False)


def test_a_linked_usage_key_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.key"
    key, _ = ensure_usage_key(tmp_path / "etc", tmp_path / "state")
    key.path.rename(real)
    key.path.symlink_to(real)
    with pytest.raises(ConfigError, match="link"):
        load_usage_key(key.path)
