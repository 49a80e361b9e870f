"""run_task.sh inside the real task image: entry points, explicit commands, exit
codes, and requirements.txt (offline wheelhouse, failure, index over the bridge)."""

from __future__ import annotations

import base64
import hashlib
import uuid
import zipfile
from pathlib import Path

import docker
import pytest

from hivemind_worker.runtime import EXIT_DEPS_FAILED, EXIT_NO_ENTRYPOINT, DockerRuntime
from hivemind_worker.runtime.egress import EgressFirewall, EgressPolicy
from hivemind_worker.tasks.model import LogStream, NetworkPolicy

from .conftest import run_to_end
from .egress_world import PUBLIC_PEER, World

pytestmark = pytest.mark.docker


def build_wheel(directory: Path, name: str = "hmdemo", version: str = "1.0", body: str = "VALUE = 42\n") -> Path:
    """A minimal pure-Python wheel, made by hand so the tests stay offline."""
    directory.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hivemind-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


async def test_main_py_is_the_default_entry_point_and_its_exit_code_is_kept(runtime, make_spec, workspace):
    (workspace / "main.py").write_text(
        "import os, sys\n"
        "print('hello from main')\n"
        "open(os.path.join(os.environ['HIVEMIND_OUTPUT_DIR'], 'answer.txt'), 'w').write('42')\n"
        "sys.exit(3)\n"
    )
    ran = await run_to_end(runtime, make_spec())
    assert ran.exit.exit_code == 3
    assert "hello from main" in ran.text(LogStream.STDOUT)
    assert (workspace / "output" / "answer.txt").read_text() == "42"


async def test_an_explicit_command_wins_over_main_py(runtime, make_spec, workspace):
    (workspace / "main.py").write_text("print('not me')\n")
    ran = await run_to_end(runtime, make_spec(command=("python3", "-c", "import sys; print('explicit'); sys.exit(5)")))
    assert ran.text() == "explicit"
    assert ran.exit.exit_code == 5


async def test_entry_point_setting_and_shell_scripts(runtime, make_spec, workspace):
    (workspace / "job.sh").write_text("echo from job.sh; exit 7\n")
    ran = await run_to_end(runtime, make_spec(entrypoint="job.sh"))
    assert ran.text() == "from job.sh"
    assert ran.exit.exit_code == 7


async def test_missing_entry_point_is_reported(runtime, make_spec):
    ran = await run_to_end(runtime, make_spec())
    assert ran.exit.exit_code == EXIT_NO_ENTRYPOINT
    assert "[hivemind] no entry point: main.py not found" in ran.text(LogStream.STDERR)


async def test_requirements_from_the_bundles_wheelhouse_offline(runtime, make_spec, workspace):
    build_wheel(workspace / "wheels")
    (workspace / "requirements.txt").write_text("hmdemo==1.0\n")
    (workspace / "main.py").write_text("import hmdemo\nprint('value', hmdemo.VALUE)\n")
    ran = await run_to_end(runtime, make_spec(), timeout=120)
    assert ran.exit.exit_code == 0, ran.text()
    assert "value 42" in ran.text(LogStream.STDOUT)
    assert "requirements.txt installed" in ran.text(LogStream.STDERR)


async def test_failed_dependency_install_fails_the_task_with_its_reason(runtime, make_spec, workspace):
    (workspace / "wheels").mkdir()
    (workspace / "requirements.txt").write_text("hivemind-no-such-package==9.9\n")
    (workspace / "main.py").write_text("print('must not run')\n")
    ran = await run_to_end(runtime, make_spec(), timeout=120)
    assert ran.exit.exit_code == EXIT_DEPS_FAILED
    assert "must not run" not in ran.text()
    assert "[hivemind] dependency install failed:" in ran.text(LogStream.STDERR)


async def test_requirements_are_skipped_without_network(runtime, make_spec, workspace):
    (workspace / "requirements.txt").write_text("hmdemo==1.0\n")
    (workspace / "main.py").write_text("print('ran anyway')\n")
    ran = await run_to_end(runtime, make_spec())
    assert ran.exit.exit_code == 0
    assert "requirements.txt skipped: the task has no network" in ran.text(LogStream.STDERR)


@pytest.fixture
def package_index(tmp_path: Path, docker_client):
    """A PEP 503 index on a "public" peer in a network namespace of the test's own
    (egress_world.py): bridge tasks reach the internet, never the host."""
    root = tmp_path / "index"
    build_wheel(root / "simple" / "hmdemo", body="VALUE = 'from the index'\n")
    u = uuid.uuid4().hex[:6]
    policy = EgressPolicy(network=f"hm-egt-{u}", bridge=f"hmegt{u}", chain=f"HM-EGT-{u}")
    world = World(policy.bridge, http_dir=str(root)).open()
    rt = DockerRuntime(client_factory=docker.from_env, egress=policy)
    try:
        yield f"http://{PUBLIC_PEER}:{world.http_port}/simple/", PUBLIC_PEER, rt
    finally:
        rt.close()
        EgressFirewall(policy).remove()
        for net in docker_client.networks.list(names=[policy.network]):
            for c in docker_client.api.containers(all=True, filters={"network": net.id}):
                docker_client.api.remove_container(c["Id"], force=True)
            net.remove()
        world.close()


@pytest.mark.root
async def test_requirements_from_an_index_when_the_policy_allows_network(make_spec, workspace, package_index):
    url, host, runtime = package_index
    (workspace / "requirements.txt").write_text("hmdemo==1.0\n")
    (workspace / "main.py").write_text("import hmdemo\nprint(hmdemo.VALUE)\n")
    spec = make_spec(network=NetworkPolicy.BRIDGE, env={"PIP_INDEX_URL": url, "PIP_TRUSTED_HOST": host})
    ran = await run_to_end(runtime, spec, timeout=120)
    assert ran.exit.exit_code == 0, ran.text()
    assert "from the index" in ran.text(LogStream.STDOUT)


async def test_bundle_to_result_archive_end_to_end(runtime, make_spec, tmp_path):
    """A zip bundle (main.py, requirements.txt, wheels/) unpacked safely, run in the
    hardened container, and its output archived: the pieces the task manager chains."""
    import json
    import tarfile

    from hivemind_worker.tasks.archive import make_result_archive
    from hivemind_worker.tasks.bundle import unpack_bundle

    wheel = build_wheel(tmp_path / "build")
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("main.py", "import os, hmdemo\n"
                    "out = os.environ['HIVEMIND_OUTPUT_DIR']\n"
                    "open(os.path.join(out, 'answer.json'), 'w').write('{\"value\": %d}' % hmdemo.VALUE)\n"
                    "print('done')\n")
        zf.writestr("requirements.txt", "hmdemo==1.0\n")
        zf.write(wheel, f"wheels/{wheel.name}")
    ws = tmp_path / "task" / "ws"
    unpack_bundle(bundle, ws, max_files=100, max_bytes=10 * 2**20)

    ran = await run_to_end(runtime, make_spec(workspace=ws), timeout=120)
    assert ran.exit.exit_code == 0, ran.text()
    logs = tmp_path / "task" / "logs.txt"
    logs.write_text("\n".join(l for _, l, _ in ran.lines) + "\n")
    size, digest = make_result_archive(
        ws / "output", logs, {"exit_code": ran.exit.exit_code, "oom_killed": ran.exit.oom_killed},
        tmp_path / "task" / "result.tar.gz", 2**20,
    )
    with tarfile.open(tmp_path / "task" / "result.tar.gz") as tar:
        assert json.loads(tar.extractfile("output/answer.json").read()) == {"value": 42}
        assert b"done" in tar.extractfile("logs.txt").read()
        assert json.loads(tar.extractfile("exit.json").read())["exit_code"] == 0
    assert size > 0 and len(digest) == 64
