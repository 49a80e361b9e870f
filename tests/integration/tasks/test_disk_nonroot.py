"""A non-root agent (the packaged unit runs as a service user) on a full disk: the
task that filled it wrote into a directory it made private, which the agent cannot
delete; the workspace is still freed before the result is made (through the task
user's helper container), so the logs fit in the result and the disk is free again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.nonroot import AgentPython, agent_python

pytestmark = [pytest.mark.docker, pytest.mark.root]
HERE = Path(__file__).resolve().parent
AGENT_UID = 4243


@pytest.fixture
def open_state():
    """A 96 MiB tmpfs owned by the agent's uid, under a directory others may enter."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs and start the agent as another user")
    base = Path(tempfile.mkdtemp(prefix="hivemind-nonroot-disk-"))
    base.chmod(0o755)
    state = base / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0755", "tmpfs", str(state)], check=True)
    os.chown(state, AGENT_UID, AGENT_UID)
    (base / "results").mkdir()
    os.chown(base / "results", AGENT_UID, AGENT_UID)
    yield state
    subprocess.run(["umount", "-l", str(state)], check=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def agent():
    """The agent's Python as uid 4243, whatever directory the checkout lies in."""
    with agent_python(AGENT_UID) as found:
        yield found


def test_non_root_agent_frees_a_workspace_it_cannot_delete(open_state, agent: AgentPython, task_image,
                                                           node_id) -> None:
    done = agent.run(HERE / "nonroot_disk_proc.py", str(open_state), node_id, task_image,
                     home=open_state.parent, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["uid"] == AGENT_UID
    assert summary["status"] == "failed" and summary["reason"].startswith("node disk full"), summary
    # Freed before the result was made (and not only by the cleanup after delivery).
    assert summary["at_upload"] == {"deep_left": False, "free_mib": summary["at_upload"]["free_mib"]}, summary
    assert summary["at_upload"]["free_mib"] > 80, summary
    assert "logs.txt" in summary["files"] and "exit.json" in summary["files"], summary
    assert summary["free_mib_after"] > 80 and summary["task_dir_left"] is False and summary["held"] == 0, summary
