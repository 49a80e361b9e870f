"""EngineProbe (the node's engine calls without docker-py) against the real engine's
socket, a missing socket, a socket that never answers and one that hangs up; and
DockerRuntime's answers through it the same as through docker-py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from typing import Callable

import docker.errors
import pytest

from hivemind_worker.errors import RuntimeUnavailable
from hivemind_worker.runtime import LABEL_MANAGED, LABEL_NODE, LABEL_TASK, DockerRuntime
from hivemind_worker.runtime.engine_probe import DEFAULT_SOCKET, EngineProbe


@pytest.fixture
def labelled(docker_client, task_image):
    """A created (never started) container with a label of its own, and one without."""
    task_id = f"probe-{uuid.uuid4().hex[:8]}"
    labels = {LABEL_MANAGED: "1", LABEL_TASK: task_id, LABEL_NODE: "n-probe"}
    ours = docker_client.containers.create(task_image, ["true"], labels=labels)
    other = docker_client.containers.create(task_image, ["true"])
    yield task_id, ours.id, other.id
    for container in (ours, other):
        container.remove(force=True)


@pytest.mark.docker
def test_version_and_info_are_the_engines(docker_client):
    probe = EngineProbe()
    assert probe.version()["Version"] == docker_client.version()["Version"]
    info = probe.info()
    assert info["ID"] == docker_client.info()["ID"]
    assert "runc" in info["Runtimes"]


@pytest.mark.docker
def test_containers_by_label_and_inspect(labelled):
    task_id, ours, other = labelled
    listed = [c["Id"] for c in EngineProbe().containers(f"{LABEL_TASK}={task_id}")]
    assert listed == [ours]
    managed = {c["Id"] for c in EngineProbe().containers(f"{LABEL_MANAGED}=1")}
    assert ours in managed and other not in managed
    assert EngineProbe().inspect(ours)["Config"]["Labels"][LABEL_TASK] == task_id
    assert EngineProbe().inspect("hivemind-no-such-container") is None


@pytest.mark.docker
def test_runtime_answers_through_the_probe_as_through_docker_py(docker_client, labelled, monkeypatch):
    import docker

    task_id = labelled[0]
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    probed, full = DockerRuntime(), DockerRuntime(client_factory=docker.from_env)
    assert probed._probe is not None and full._probe is None

    async def both():
        return await asyncio.gather(probed.version(), full.version(), probed.list_managed(), full.list_managed())

    try:
        v1, v2, listed1, listed2 = asyncio.run(both())
    finally:
        probed.close()
        full.close()
    assert v1 == v2
    mine1 = [c for c in listed1 if c.task_id == task_id]
    mine2 = [c for c in listed2 if c.task_id == task_id]
    assert len(mine1) == 1 and mine1 == mine2
    assert mine1[0].node_id == "n-probe" and not mine1[0].running and mine1[0].exit_code is None
    assert probed._client is None, "the probe's answers built no docker-py client"


def test_missing_socket_is_runtime_unavailable_with_the_fix(tmp_path):
    path = tmp_path / "no-docker.sock"
    with pytest.raises(RuntimeUnavailable) as err:
        EngineProbe(str(path)).version()
    text = str(err.value)
    assert str(path) in text and "not reachable" in text and "start the Docker engine" in text


def test_an_engine_that_never_answers_times_out(tmp_path):
    path = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)  # accepts the connection (the kernel does), never answers
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable, match="did not answer in 0.5 s"):
            EngineProbe(path, timeout_s=0.5).info()
        assert time.monotonic() - started < 5
    finally:
        server.close()


def against_one_connection(path: str, answer: Callable[[socket.socket], None], call: Callable[[], object]) -> None:
    """Run ``call()`` (blocking) against a unix socket at ``path`` whose one connection
    ``answer(conn)`` serves after reading the request; the socket is closed afterwards."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        try:
            answer(conn)
        finally:
            conn.close()

    async def run() -> None:
        serving = asyncio.create_task(asyncio.to_thread(serve))
        try:
            await asyncio.to_thread(call)
        finally:
            await serving

    try:
        asyncio.run(run())
    finally:
        server.close()


def test_not_an_engine_is_runtime_unavailable(tmp_path):
    """Something else on the socket: an HTTP error status is a clear error, not JSON parsed."""
    path = str(tmp_path / "other.sock")

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops")

    with pytest.raises(RuntimeUnavailable, match="Docker answered 500 \\(oops\\)"):
        against_one_connection(path, answer, EngineProbe(path, timeout_s=5).version)


@pytest.mark.parametrize(("host", "tls", "expected"), [
    (None, None, DEFAULT_SOCKET),
    ("unix:///run/other/docker.sock", None, "/run/other/docker.sock"),
    ("unix://", None, DEFAULT_SOCKET),
    ("unix://run/docker.sock", None, None),  # relative: docker-py's own reading
    ("unix:///run/other/docker.sock", "1", None),  # TLS: docker-py's business
    ("tcp://127.0.0.1:2375", None, None),
    ("ssh://user@host", None, None),
])
def test_docker_host_as_docker_py_reads_it(monkeypatch, host, tls, expected):
    for name, value in (("DOCKER_HOST", host), ("DOCKER_TLS_VERIFY", tls)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    probe = EngineProbe.for_env()
    assert (probe.socket_path if probe else None) == expected


@pytest.mark.docker
@pytest.mark.parametrize("through", ["probe", "docker-py"])
def test_a_containers_life_and_the_engines_refusals_read_the_same_either_way(docker_client, task_image, through):
    """create (docker-py's ContainerConfig as the body), start, wait, kill, remove; and
    the refusals the runtime tells apart: a taken name (409), a container that is not
    running (409), one that is gone (404), an image the engine lacks (404 "No such
    image"), each translated into our error with the engine's words."""
    from hivemind_worker.errors import TaskError
    from hivemind_worker.runtime.engine_probe import DockerPyCalls
    from hivemind_worker.runtime.translate import is_conflict, is_image_missing, is_not_found, translate

    api = docker_client.api
    calls = EngineProbe() if through == "probe" else DockerPyCalls(api)
    name = f"hivemind-probe-{uuid.uuid4().hex[:8]}"
    config = api.create_container_config(image=task_image, command=["sh", "-c", "exit 3"],
                                         labels={LABEL_MANAGED: "1"}, environment={"A": "b c"})

    def refused(fn, *args):
        with pytest.raises(Exception) as err:
            fn(*args)
        return err.value

    cid = calls.create(name, config, api._version)
    try:
        attrs = docker_client.api.inspect_container(cid)
        assert attrs["Name"] == "/" + name and "A=b c" in attrs["Config"]["Env"]
        taken = refused(calls.create, name, config, api._version)
        assert is_conflict(taken) and not is_not_found(taken)
        calls.start(cid)
        assert calls.wait(cid) == 3
        stopped = refused(calls.kill, cid)
        assert is_conflict(stopped)
        calls.remove(cid)
        gone = refused(calls.remove, cid)
        assert is_not_found(gone) and not is_conflict(gone) and not is_image_missing(gone)
        assert isinstance(translate(gone, "remove it"), TaskError)
        missing = refused(calls.create, name + "-x", {**config, "Image": "hivemind-no-such-image:never"},
                          api._version)
        assert is_image_missing(missing) and is_not_found(missing)
        error = translate(missing, "create container for task t")
        assert isinstance(error, TaskError) and "image not found" in str(error)
        assert "hivemind-no-such-image" in str(error), "the engine's own words are kept"
    finally:
        for leftover in (cid, name + "-x"):
            with contextlib.suppress(docker.errors.NotFound):  # removed by the test already, or never made
                docker_client.api.remove_container(leftover, force=True)


def test_wait_has_no_timeout_and_an_engine_gone_is_runtime_unavailable(tmp_path):
    """wait() blocks as long as the task runs (no read timeout); a socket that closes
    mid-call (the engine going away) is RuntimeUnavailable, as for docker-py."""
    path = str(tmp_path / "closing.sock")

    def hang_up_later(conn: socket.socket) -> None:
        # The task's run, longer than the probe's 0.3 s timeout: a timeout would say
        # "did not answer in 0.3 s"; the hang-up says "not reachable".
        time.sleep(0.8)

    with pytest.raises(RuntimeUnavailable, match="not reachable"):
        against_one_connection(path, hang_up_later, lambda: EngineProbe(path, timeout_s=0.3).wait("c1"))


@pytest.mark.docker
def test_the_attach_stream_opened_before_the_start_has_every_byte(docker_client, task_image):
    from hivemind_worker.runtime.logstream import FrameParser, body_blocks
    from hivemind_worker.runtime.translate import EngineRefused
    from hivemind_worker.vocab import LogStream

    probe = EngineProbe()
    cid = docker_client.api.create_container(task_image, ["sh", "-c", "echo first; echo err >&2; printf 'no newline'"])["Id"]
    try:
        stream = probe.attach(cid)
        probe.start(cid)
        parser, chunks = FrameParser(stamped=False), []
        for block in body_blocks(stream):  # ends when the container does
            chunks += parser.feed(block)
        chunks += parser.flush()
        stream.close()
        text = {s: b"".join(t for s2, t, _ in chunks if s2 is s) for s in (LogStream.STDOUT, LogStream.STDERR)}
        assert text == {LogStream.STDOUT: b"first\nno newline\n", LogStream.STDERR: b"err\n"}
    finally:
        docker_client.api.remove_container(cid, force=True)
    with pytest.raises(EngineRefused) as err:
        probe.attach(cid)
    assert err.value.status_code == 404
