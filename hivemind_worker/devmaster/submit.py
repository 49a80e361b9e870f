"""`hivemind-worker submit`: queue a task on a dev-master and, optionally, wait for it.

Works on the state directory alone: the bundle is copied to bundles/<task>.zip
(a directory is zipped first: regular files only, no links), then the task row is
inserted; the running `serve` notices the commit and assigns it. ``wait()`` polls
the database: it hands new log lines to ``on_log`` in order, state changes to
``on_state``, and once the task has ended and its result arrived (or did not within
``result_grace_s``), copies the archive into the output directory. A lost attempt
that the master runs again is not an ending: wait() says so and follows the next
attempt (its log starts again). Whatever ended the task - its own exit, a refusal,
deferring too long, being lost with no retry left, a cancellation - wait() returns.

Exit codes of a waited task (``Outcome.exit_code``): the task's own exit code when
it exited; 124 timed out; 137 killed for memory; 130 cancelled; 7 rejected, failed
or lost. This module never prints.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.db import open_db
from hivemind_worker.devmaster.layout import StateDir, parse_duration, parse_size
from hivemind_worker.errors import ConfigError, TaskError
from hivemind_worker.fsutil import atomic_write

EXIT_TASK_ERROR = TaskError.exit_code
EXIT_CODES = {"timed_out": 124, "oom_killed": 137, "cancelled": 130, "rejected": EXIT_TASK_ERROR,
              "failed": EXIT_TASK_ERROR, "lost": EXIT_TASK_ERROR}


@dataclass(frozen=True)
class SubmitRequest:
    bundle: bytes  # zip bytes; b"" = no bundle
    spec: dict = field(default_factory=dict)
    priority: int = 0

    @classmethod
    def build(cls, *, path: Path | None, image: str = "", cpus: float = 1.0, memory: str = "512m", gpus: int = 0,
              timeout: str = "10m", network: str = "none", priority: int = 0, command: str | None = None,
              entrypoint: str = "", env: list[str] | tuple[str, ...] = (), no_retry: bool = False) -> "SubmitRequest":
        if path is None and not command:
            raise ConfigError("give a directory or a .zip bundle to run, or --command")
        if network not in ("none", "bridge"):
            raise ConfigError(f"--network {network!r}: use none or bridge")
        if cpus <= 0 or gpus < 0:
            raise ConfigError("--cpus must be more than 0 and --gpus 0 or more")
        variables = {}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--env {item!r}: give KEY=VALUE")
            variables[key] = value
        spec = {
            "image": image,
            "command": shlex.split(command) if command else [],
            "entrypoint": entrypoint,
            "env": variables,
            "cpu_millicores": int(round(cpus * 1000)),
            "memory_bytes": parse_size(memory, "--memory"),
            "gpu_count": gpus,
            "timeout_s": int(parse_duration(timeout, "--timeout")),
            "network": network,
        }
        if no_retry:
            spec["no_retry"] = True
        return cls(bundle=read_bundle(path) if path is not None else b"", spec=spec, priority=priority)


def zip_directory(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                full = Path(directory) / name
                if full.is_symlink() or not full.is_file():
                    continue  # links could point outside the bundle
                archive.write(full, full.relative_to(root).as_posix())
    return buffer.getvalue()


def read_bundle(path: Path) -> bytes:
    if path.is_dir():
        return zip_directory(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such directory or file; give a directory or a .zip bundle")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path}: not a zip archive; give a directory (zipped for you) or a .zip")
    return path.read_bytes()


def submit(state: StateDir, request: SubmitRequest) -> str:
    """Queue the task; returns its id."""
    state.require()
    conn = open_db(state.db)
    try:
        task_id = "task-" + os.urandom(4).hex()
        digest = hashlib.sha256(request.bundle).hexdigest() if request.bundle else ""
        if request.bundle:
            atomic_write(state.bundle(task_id), request.bundle, mode=0o600)
        taskdb.create_task(conn, request.spec, request.priority, len(request.bundle), digest, task_id=task_id)
        return task_id
    finally:
        conn.close()


@dataclass(frozen=True)
class Outcome:
    task_id: str
    outcome: str  # exited, failed, rejected, cancelled, timed_out, oom_killed, lost
    exit_code: int  # what `submit --wait` exits with
    message: str
    result_path: Path | None


def _exit_code(outcome: str, task_code: int | None) -> int:
    if outcome == "exited":
        code = task_code or 0
        return code if 0 <= code <= 255 else 1
    return EXIT_CODES.get(outcome, EXIT_TASK_ERROR)


def _message(row, outcome: str) -> str:
    task_id, node, reason = row["task_id"], row["node_id"] or "no node", row["reason"]
    why = f": {reason}" if reason else ""
    if outcome == "lost":
        spec = json.loads(row["spec_json"])
        why += " (not run again: submitted with --no-retry)" if spec.get("no_retry") else (
            " (not run again: cancelled)" if row["cancel_requested"] else
            f" (attempt {row['attempt']}; no retries left, see `dev-master serve --max-retries`)")
    return {
        "exited": f"task {task_id} exited with code {row['exit_code']}",
        "rejected": f"task {task_id} was rejected by {node}{why}",
        "failed": f"task {task_id} failed on {node}{why}",
        "cancelled": f"task {task_id} was cancelled{why}",
        "timed_out": f"task {task_id} timed out{why}",
        "oom_killed": f"task {task_id} was killed for exceeding its memory limit{why}",
        "lost": f"task {task_id} was lost{why}",
    }.get(outcome, f"task {task_id} ended as {outcome}{why}")


def _queued_hint(row) -> str:
    spec = json.loads(row["spec_json"])
    return (
        f"still queued: no connected node has room for {spec.get('cpu_millicores', 0) / 1000:g} CPU, "
        f"{spec.get('memory_bytes', 0) // (1024 * 1024)} MiB, {spec.get('gpu_count', 0)} GPU "
        "(see `hivemind-worker dev-master nodes`; is a worker running and enrolled here?)"
    )


def wait(state: StateDir, task_id: str, output_dir: Path, *,
         on_log: Callable[[str, str], None] = lambda stream, text: None,
         on_state: Callable[[str], None] = lambda message: None,
         poll_s: float = 0.2, result_grace_s: float = 30.0, queued_hint_s: float = 5.0) -> Outcome:
    """Follow a task until it ends and its result is in; save the result."""
    state.require()
    conn = open_db(state.db)
    seq, last_state, ended_at, started = 0, "", None, time.monotonic()
    hinted, attempt, retry_told = False, 1, False

    def drain_logs() -> None:
        nonlocal seq
        while True:
            rows = taskdb.logs_after(conn, task_id, seq)
            for r in rows:
                on_log(r["stream"], r["text"])
                seq = r["seq"]
            if len(rows) < 1000:
                return

    try:
        while True:
            row = taskdb.get_task(conn, task_id)
            if row is None:
                raise ConfigError(f"no task {task_id!r} in {state.root}")
            if row["attempt"] != attempt:  # the last attempt was lost; this one's log starts at 1
                attempt, seq, ended_at, retry_told = row["attempt"], 0, None, False
                on_state(f"running again as attempt {attempt}")
            drain_logs()
            if row["state"] != last_state:
                last_state = row["state"]
                on_state(last_state + (f" on {row['node_id']}" if row["node_id"] and last_state == "assigned" else ""))
            if last_state == "queued" and not hinted and time.monotonic() - started > queued_hint_s:
                hinted = True
                on_state(_queued_hint(row))
            outcome = row["outcome"]
            if outcome is None and row["state"] == "done":
                # The node delivered everything but the outcome; never wait forever on it.
                drain_logs()
                return Outcome(task_id, "unknown", EXIT_TASK_ERROR,
                               f"task {task_id} finished on {row['node_id'] or 'its node'}, but its outcome never "
                               "reached the master; see `hivemind-worker tasks` on that node", None)
            if outcome == "lost" and row["retry_pending"]:
                if not retry_told:
                    retry_told = True
                    on_state(f"attempt {attempt} lost ({row['reason']}); it will run again")
            elif outcome is not None:
                ended_at = ended_at or time.monotonic()
                settled = row["result_complete"] or row["state"] in ("done", "lost", "rejected") or (
                    outcome == "cancelled" and row["node_id"] is None)
                if settled or time.monotonic() - ended_at > result_grace_s:
                    drain_logs()
                    result = None
                    if row["result_complete"]:
                        output_dir.mkdir(parents=True, exist_ok=True)
                        result = output_dir / f"{task_id}.tar.gz"
                        tmp = output_dir / f".{task_id}.tar.gz.part"
                        shutil.copyfile(state.result(task_id), tmp)
                        os.replace(tmp, result)
                    message = _message(row, outcome)
                    if result is None and outcome not in ("rejected", "lost") and row["node_id"]:
                        message += " (no result archive arrived)"
                    return Outcome(task_id, outcome, _exit_code(outcome, row["exit_code"]), message, result)
            time.sleep(poll_s)
    finally:
        conn.close()

