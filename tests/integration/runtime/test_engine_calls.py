"""What a task costs the engine: the calls DockerRuntime makes per task, counted on the
real engine (issue 13: dispatch within 10 % of the raw API loop). A task of an image
seen before: create, attach, start, wait, ONE inspect, remove; no image inspect, no
version handshake, no inspect after create. An image removed behind the runtime's
back is asked for again, never taken as present."""

from __future__ import annotations

import collections
import re
import uuid
from urllib.parse import urlsplit

import docker
import pytest

from hivemind_worker.errors import TaskError
from hivemind_worker.runtime import DockerRuntime

from .conftest import run_to_end

pytestmark = pytest.mark.docker


class CountingClients:
    """A client factory whose clients count their requests by method and path shape."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.made = 0  # clients made (each asks the engine for its version first)

    def __call__(self) -> docker.DockerClient:
        self.made += 1
        client = docker.from_env()
        send = client.api.request
        calls = self.calls

        def request(method: str, url: str, *args, **kwargs):
            path = re.sub(r"^/v[0-9.]+/", "/", urlsplit(url).path)
            path = re.sub(r"/containers/(?!create)[^/]+", "/containers/ID", path)
            path = re.sub(r"/images/.+/json", "/images/REF/json", path)
            calls[f"{method} {path}"] += 1
            return send(method, url, *args, **kwargs)

        client.api.request = request
        return client


async def test_a_task_of_a_known_image_costs_six_engine_calls(make_spec, task_image):
    clients = CountingClients()
    rt = DockerRuntime(client_factory=clients)
    try:
        assert await rt.has_image(task_image)
        await run_to_end(rt, make_spec(command=("true",)))  # the first: the version handshakes
        clients.calls.clear()
        clients.made = 0
        assert await rt.has_image(task_image)  # remembered: no call
        ran = await run_to_end(rt, make_spec(command=("sh", "-c", "echo hi")))
    finally:
        rt.close()
    assert ran.exit.exit_code == 0 and ran.text() == "hi"
    assert clients.made == 0  # wait()'s inspect over a new connection, not a new client
    assert dict(clients.calls) == {
        "POST /containers/create": 1, "POST /containers/ID/start": 1, "POST /containers/ID/attach": 1,
        "POST /containers/ID/wait": 1, "GET /containers/ID/json": 1, "DELETE /containers/ID": 1,
    }


async def test_an_image_removed_behind_its_back_is_asked_for_again(runtime, make_spec, task_image, docker_client):
    tag = f"hivemind-test-vanish:{uuid.uuid4().hex[:8]}"
    docker_client.api.tag(task_image, *tag.split(":"))
    try:
        assert await runtime.has_image(tag)
        docker_client.api.remove_image(tag)
        assert await runtime.has_image(tag)  # remembered; the create finds out
        with pytest.raises(TaskError, match="image not found"):
            await runtime.create(make_spec(image=tag, command=("true",)))
        assert not await runtime.has_image(tag)  # forgotten: the runner pulls it again
    finally:
        try:
            docker_client.api.remove_image(tag)
        except docker.errors.NotFound:
            pass
