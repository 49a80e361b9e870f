"""The packaged agent is not root: it runs as a service user in the docker group.
Its tasks (uid 1000) must still be able to write their workspace, the agent must
still read their output and remove everything afterwards."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest

from hivemind_worker.config import Settings
from tests.support.nonroot import AgentPython, agent_python

pytestmark = pytest.mark.docker
HERE = Path(__file__).resolve().parent
AGENT_UID = 4242

MAIN = """
import os
out = os.environ["HIVEMIND_OUTPUT_DIR"]
os.makedirs(os.path.join(out, "deep", "er"))
open(os.path.join(out, "deep", "er", "result.txt"), "w").write("written by uid %d" % os.getuid())
fd = os.open(os.path.join(out, "private.txt"), os.O_WRONLY | os.O_CREAT, 0o600)  # unreadable to others
os.write(fd, b"secret")
os.close(fd)
os.chmod(os.path.join(out, "deep"), 0o700)
os.makedirs(".cache/junk")  # task-made clutter in the workspace, owned by uid 1000
open(".cache/junk/x", "w").write("x")
open("data/more.txt", "w").write("the task may write into its bundle's directories")
print("ok")
"""


@pytest.fixture
def open_dir():
    """pytest's tmp_path lives under a 0700 directory of root's: not for other users."""
    path = Path(tempfile.mkdtemp(prefix="hivemind-nonroot-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent():
    """The agent's Python as uid 4242, whatever directory the checkout lies in."""
    with agent_python(AGENT_UID) as found:
        yield found


def test_non_root_agent_runs_reads_and_cleans_up(open_dir, agent: AgentPython, task_image, node_id) -> None:
    tmp_path = open_dir
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, AGENT_UID, AGENT_UID)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", MAIN)
        zf.writestr("data/input.txt", "in")
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(buf.getvalue())
    done = agent.run(HERE / "nonroot_proc.py", str(state), node_id, task_image, str(bundle),
                     home=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["uid"] == AGENT_UID
    assert (summary["status"], summary["reason"]) == ("exited", "exited with code 0"), summary
    assert summary["result"] == "written by uid %s" % Settings().task_user.split(":")[0]
    assert "logs.txt" in summary["files"] and "exit.json" in summary["files"]
    assert "output/private.txt" in summary["files"]
    assert summary["task_dir_left"] is False and summary["held"] == 0
