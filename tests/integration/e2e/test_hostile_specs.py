"""A hostile master proposes task specs the node's policy forbids; the node decides.
Real dev-master and worker daemon over loopback TLS, real Docker: each crafted spec
ends REJECTED at the master with a reason naming the setting that would allow it,
and nothing ran on the host (no container, no task directory)."""

from __future__ import annotations

import pytest

from hivemind_worker.devmaster import submit as submit_core
from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.db import open_db
from hivemind_worker.devmaster.layout import StateDir
from tests.integration.e2e.test_tasks_e2e import connected_node
from tests.support.stack import wait_for

pytestmark = pytest.mark.docker

BASE = {"cpu_millicores": 500, "memory_bytes": 128 * 1024**2, "command": ["python3", "-c", "print('ran')"]}
CRAFTED = [
    ({"network": "bridge"}, 'task_networks = "none,bridge"'),
    ({"image": "evil.example/miner:latest"}, "task_images"),
    ({"timeout_s": 10 * 86400}, "task_max_timeout_s"),
    ({"env": {"LD_PRELOAD=/x": "1"}}, "invalid env key"),
    ({"env": {"BIG": "x" * 70_000}}, "task_env_max_bytes"),
    ({"entrypoint": "../../etc/passwd"}, "invalid entry point"),
]


def test_crafted_specs_are_rejected_and_nothing_runs(devmaster, make_node, task_image, docker_client):
    node = connected_node(devmaster, make_node, task_image=task_image)
    state = StateDir(devmaster.state)
    ids = {submit_core.submit(state, submit_core.SubmitRequest(bundle=b"", spec={**BASE, **spec, "no_retry": True})): why
           for spec, why in CRAFTED}

    def settled():
        conn = open_db(state.db)
        try:
            rows = {t: taskdb.get_task(conn, t) for t in ids}
            return rows if all(r["state"] not in ("queued", "assigned", "running") for r in rows.values()) else None
        finally:
            conn.close()

    rows = wait_for(settled, 60, "the crafted tasks to settle")
    for task_id, why in ids.items():
        row = dict(rows[task_id])
        assert row["outcome"] == "rejected" and why in row["reason"], row
    node_id = node.node_id()
    leftovers = docker_client.api.containers(all=True, filters={"label": f"hivemind.node_id={node_id}"})
    assert leftovers == []
    tasks_dir = node.state_dir / "tasks"
    assert not tasks_dir.exists() or not any(tasks_dir.iterdir())
