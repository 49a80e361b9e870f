"""Image GC on the real engine: removes unused task images, never one in use, kept,
or used by any container, and only images it knows to be task images."""

from __future__ import annotations

import io
import tarfile
import uuid

import docker
import pytest

pytestmark = pytest.mark.docker


@pytest.fixture
def tiny_images(docker_client):
    """Throwaway images with distinct ids (one file each), removed afterwards."""
    made: list[str] = []

    def make() -> str:
        ref = f"hivemind-gc-test:{uuid.uuid4().hex[:10]}"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = ref.encode()
            info = tarfile.TarInfo("marker")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        repo, tag = ref.split(":")
        docker_client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        made.append(ref)
        return ref

    containers: list = []
    yield make, containers
    for c in containers:
        c.remove(force=True)
    for ref in made:
        try:
            docker_client.api.remove_image(ref, force=True)
        except docker.errors.NotFound:
            pass


async def test_gc_removes_only_unused_task_images(runtime, docker_client, task_image, tiny_images):
    make, containers = tiny_images
    unused, used_by_container, running_task, kept = make(), make(), make(), make()
    containers.append(docker_client.containers.create(used_by_container, command=["/marker"]))
    candidates = [unused, used_by_container, running_task, kept, task_image]

    assert await runtime.gc_images(set(), set(), 100.1, 100.0, candidates) == []  # below the high mark

    removed = await runtime.gc_images({running_task}, {kept, task_image}, 0.0, 0.0, candidates)
    assert removed == [unused]
    assert not await runtime.has_image(unused)
    for ref in (used_by_container, running_task, kept, task_image):
        assert await runtime.has_image(ref), ref


async def test_gc_by_default_only_touches_images_this_runtime_used(runtime, make_spec, tiny_images, task_image):
    make, _ = tiny_images
    used, foreign = make(), make()
    cid = await runtime.create(make_spec(image=used, command=("/marker",)))
    assert await runtime.gc_images(set(), {task_image}, 0.0, 0.0) == []  # its container still exists
    await runtime.remove(cid)
    assert await runtime.gc_images(set(), {task_image}, 0.0, 0.0) == [used]
    assert await runtime.has_image(foreign)
