"""The node's task policy (tasks/policy.py): every refusal names what was refused and
the setting that allows it; ceilings reject, never clamp; the task user is never a
host account."""

from __future__ import annotations

import asyncio
import grp
import pwd
from pathlib import Path

import pytest

from hivemind_worker.config import Settings, load_settings
from hivemind_worker.errors import ConfigError, TaskRejected
from hivemind_worker.tasks import policy
from tests.support.localhost import LocalTaskHost
from hivemind_worker.tasks.manager import TaskManager
from hivemind_worker.tasks.model import NetworkPolicy, Resources, TaskRequest, TaskStatus
from tests.unit.tasks.fakes import CAPACITY, FakeRuntime, Script

DIGEST = "sha256:" + "ab" * 32


def req(**kw) -> TaskRequest:
    return TaskRequest(task_id="t", **kw)


def rejected(r: TaskRequest, **settings) -> str:
    with pytest.raises(TaskRejected) as info:
        policy.check(r, Settings(**settings))
    return str(info.value)


def test_a_fresh_node_runs_its_own_image_without_network():
    policy.check(req(), Settings())
    policy.check(req(image=Settings().task_image, timeout_s=3600, env={"A": "1"}), Settings())


def test_bridge_is_opt_in():
    reason = rejected(req(network=NetworkPolicy.BRIDGE))
    assert "network 'bridge' is not allowed" in reason and 'task_networks = "none,bridge"' in reason
    policy.check(req(network=NetworkPolicy.BRIDGE), Settings(task_networks="none,bridge"))
    # "none" gives a task less than anything else: always allowed.
    policy.check(req(network=NetworkPolicy.NONE), Settings(task_networks="bridge"))


@pytest.mark.parametrize(
    "allow, image, ok",
    [
        ("", "hivemind-task-runtime:local", True),
        ("", "python:3.11", False),
        ("*", "anything/at:all", True),
        ("python:3.11*, ghcr.io/acme/*", "python:3.11-slim", True),
        ("python:3.11*, ghcr.io/acme/*", "ghcr.io/acme/train:v2", True),
        ("python:3.11*, ghcr.io/acme/*", "ghcr.io/evil/train:v2", False),
        ("python:3.11*", "python:3.12", False),
        (f"@{DIGEST}", f"whatever/name@{DIGEST}", True),
        (f"@{DIGEST}", "whatever/name:latest", False),
        (f"@{DIGEST}", f"x@sha256:{'cd' * 32}", False),
        (f"acme/train@{DIGEST}", f"acme/train:v1@{DIGEST}", True),
        (f"acme/train@{DIGEST}", f"other/train@{DIGEST}", False),
    ],
)
def test_image_allow_list(allow, image, ok):
    settings = Settings(task_images=allow)
    assert policy.image_allowed(image, settings) is ok
    if not ok:
        reason = rejected(req(image=image), task_images=allow)
        assert f"image {image} is not allowed" in reason and "task_images" in reason


@pytest.mark.parametrize("image", ["-H tcp://x", "Upper/case", "a b", "x\n", "a/../b", "x" * 300])
def test_malformed_image_references_are_refused(image):
    assert "invalid image reference" in rejected(req(image=image), task_images="*")


def test_gpu_and_time_ceilings_reject_never_clamp():
    reason = rejected(req(resources=Resources(1000, 1, 3)), task_max_gpus=2)
    assert "asks for 3 GPU(s)" in reason and "at most 2 per task (setting task_max_gpus)" in reason
    policy.check(req(resources=Resources(1000, 1, 2)), Settings(task_max_gpus=2))
    reason = rejected(req(timeout_s=7200), task_max_timeout_s=3600, task_timeout_s=60)
    assert "timeout of 7200 s" in reason and "at most 3600 s (setting task_max_timeout_s)" in reason
    assert "invalid timeout" in rejected(req(timeout_s=-1))
    assert "invalid timeout" in rejected(req(timeout_s=float("nan")))


def test_env_keys_values_and_size():
    assert "invalid env key '1BAD'" in rejected(req(env={"1BAD": "x"}))
    assert "invalid env key 'A=B'" in rejected(req(env={"A=B": "x"}))
    assert "NUL byte" in rejected(req(env={"A": "x\x00y"}))
    reason = rejected(req(env={"BIG": "x" * 2000}), task_env_max_bytes=1024)
    assert "env is 2005 bytes" in reason and "task_env_max_bytes" in reason
    policy.check(req(env={"_OK_1": "x" * 500}), Settings(task_env_max_bytes=1024))


@pytest.mark.parametrize("entry", ["/etc/passwd", "../x.py", "a/../../x", "a\nb"])
def test_entrypoint_stays_in_the_bundle(entry):
    assert "invalid entry point" in rejected(req(entrypoint=entry))


def test_task_user_is_never_a_host_account():
    taken = pwd.getpwall()[-1]
    reason = rejected(req(), task_user=f"{taken.pw_uid}:65100")
    assert f"is host account {taken.pw_name!r}" in reason and "set task_user" in reason
    group = grp.getgrall()[-1]
    assert f"is host group {group.gr_name!r}" in rejected(req(), task_user=f"65100:{group.gr_gid}")
    assert "is root" in rejected(req(), task_user="0:0")
    # The default is nobody's.
    uid, gid = (int(x) for x in Settings().task_user.split(":"))
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    with pytest.raises(KeyError):
        grp.getgrgid(gid)
    assert uid != 1000 and uid < 65536  # never the first login account; fits userns-remap


@pytest.mark.parametrize(
    "content, message",
    [
        ('task_networks = "none,host"\n', "task_networks"),
        ('task_networks = ""\n', "task_networks"),
        ('task_user = "nobody"\n', "task_user: must be numeric"),
        ("task_timeout_s = 7200\ntask_max_timeout_s = 3600\n", "task_timeout_s"),
        ('task_runtime = "runsc; rm -rf /"\n', "task_runtime"),
    ],
)
def test_policy_settings_are_validated(tmp_path: Path, content: str, message: str):
    (tmp_path / "worker.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)})


async def test_the_manager_rejects_with_the_policy_reason(tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc")
    runtime, host = FakeRuntime(), LocalTaskHost(tmp_path / "results")
    m = TaskManager(settings, runtime, host, "node-1", capacity=CAPACITY, sampler=None)
    host.manager = m
    await m.start()
    try:
        await m.assign(TaskRequest("t-net", network=NetworkPolicy.BRIDGE, resources=Resources(1000, 2**28)))
        event = host.final_event("t-net")
        assert event.status is TaskStatus.REJECTED and "task_networks" in event.reason
        assert runtime.containers == {} and not (settings.state_dir / "tasks" / "t-net").exists()
    finally:
        await m.close()


async def test_the_task_runtime_setting_reaches_the_container_spec(tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state", config_dir=tmp_path / "etc", task_runtime="runsc")
    runtime, host = FakeRuntime(), LocalTaskHost(tmp_path / "results")
    runtime.scripts["t-rt"] = Script(hang=True)
    m = TaskManager(settings, runtime, host, "node-1", capacity=CAPACITY, sampler=None)
    host.manager = m
    await m.start()
    try:
        await m.assign(TaskRequest("t-rt", resources=Resources(1000, 2**28)))
        for _ in range(500):
            if runtime.containers:
                break
            await asyncio.sleep(0.01)
        assert runtime.by_task("t-rt").spec.runtime == "runsc"
        assert runtime.by_task("t-rt").spec.user == "65100:65100"
        await m.cancel("t-rt", "test over")
    finally:
        await m.close()
