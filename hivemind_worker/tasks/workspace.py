"""A task's directories on the host: ``<state_dir>/tasks/<task_id>/``.

    tasks/<task_id>/            0700, the agent's: nothing of it is mounted whole
        logs.spool              the task's log spool (see logspool.py)
        bundle.zip              the downloaded bundle, deleted once unpacked
        result.tar.gz           the result archive, kept until the master acks it
        workspace/              mounted at /workspace in the container (rw)
            output/             HIVEMIND_OUTPUT_DIR: what the result archive carries

The spool, bundle and archive sit beside the workspace, not in it, so the task cannot
tamper with its own logs or result.

Permissions. The task runs as ``task_user`` (1000:1000), the agent as root (tests,
CI, some installs) or, under the packaged systemd unit, as the service user
``hivemind-worker`` in the docker group. As root the workspace is chowned to the
task user with mode 0700: only the task (and root) can touch it. A non-root agent
cannot chown, so the workspace tree is opened up instead (directories 0777, files
a+rw): the parent ``tasks/<id>/`` is 0700 and owned by the agent, so no other host
user can reach it, while uid 1000 inside the container (which never traverses the
host parents of a bind mount) can write. What the task creates is owned by uid
1000; a non-root agent that cannot delete it asks the runtime for a cleanup
container (see runner.py), so nothing is left behind either way.

Path handling only; no Docker, no journal.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from hivemind_worker.errors import TaskRejected

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: "$" allows a trailing newline


def check_task_id(task_id: str) -> None:
    """A task id becomes a directory name and a container name: keep it boring."""
    if not _SAFE_ID.fullmatch(task_id) or ".." in task_id:
        raise TaskRejected(
            f"invalid task id {task_id!r}: use 1-128 letters, digits, '_', '.', '-'"
        )


def parse_user(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


class TaskDirs:
    def __init__(self, root: Path, task_id: str) -> None:
        self.root = root / task_id
        self.spool = self.root / "logs.spool"
        self.bundle = self.root / "bundle.zip"
        self.result = self.root / "result.tar.gz"
        self.workspace = self.root / "workspace"
        self.output = self.workspace / "output"

    def create(self, task_user: str) -> None:
        """Fresh directories (an interrupted earlier attempt's workspace is wiped)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o700)  # tasks/: nobody but the agent lists them
        os.chmod(self.root, 0o700)
        if self.workspace.exists():
            shutil.rmtree(self.workspace, ignore_errors=True)
        self.output.mkdir(parents=True)
        self.give_to_task(task_user)

    def give_to_task(self, task_user: str) -> None:
        uid, gid = parse_user(task_user)
        if os.geteuid() == 0:
            for dirpath, dirnames, filenames in os.walk(self.workspace):
                os.chown(dirpath, uid, gid)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
            os.chmod(self.workspace, 0o700)
            os.chmod(self.output, 0o700)
        else:
            for dirpath, dirnames, filenames in os.walk(self.workspace):
                os.chmod(dirpath, 0o777)
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if not os.path.islink(path):
                        os.chmod(path, os.stat(path).st_mode | 0o666)

    def ensure_output(self) -> Path:
        self.output.mkdir(parents=True, exist_ok=True)
        return self.output

    def free_workspace(self) -> None:
        """A full disk: delete the workspace and the bundle; the spool and the result
        (logs, exit record) stay for delivery."""
        shutil.rmtree(self.workspace, ignore_errors=True)
        self.bundle.unlink(missing_ok=True)

    def remove(self) -> bool:
        """Delete everything; False if something (made by the task) could not go."""
        shutil.rmtree(self.root, ignore_errors=True)
        return not self.root.exists()
