"""What every fault drill checks, on top of tests/support/stack.py.

A drill asserts the WHOLE outcome of a fault: the task's outcome, exit code and reason
on the master, every log line stored exactly once (seqs 1..N, no gap, no duplicate,
the expected text), the result archive whole (or the reason why there is none), the
node healthy after (a follow-up task succeeds), and the node's `hivemind-worker tasks`
agreeing with the master's `dev-master tasks` on every task.

Polling reads the master's SQLite read-only (cheap on two busy cores); the final
agreement goes through both CLIs, as an operator would look.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import tarfile
import time
from contextlib import closing
from pathlib import Path
from typing import Callable

from hivemind_worker.devmaster import logstore
from tests.conftest import cli
from tests.support.stack import DevMaster, Node, wait_for

# States a task ends in on the dev-master: nothing more will happen to it.
FINAL = {"done", "rejected", "lost", "cancelled"}


def db_rows(master: DevMaster, sql: str, args: tuple = ()) -> list[dict]:
    with closing(sqlite3.connect(f"file:{master.state / 'state.db'}?mode=ro", uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]


def task_row(master: DevMaster, task_id: str) -> dict:
    rows = db_rows(master, "SELECT * FROM tasks WHERE task_id=?", (task_id,))
    assert rows, f"the master has no task {task_id}"
    return rows[0]


def task_events(master: DevMaster, task_id: str) -> list[dict]:
    return db_rows(master, "SELECT * FROM task_events WHERE task_id=? ORDER BY id", (task_id,))


def describe(master: DevMaster, task_id: str, node: Node | None = None) -> str:
    """What the master (and the node) know about a task: for failure messages."""
    row = task_row(master, task_id)
    keep = ("state", "node_id", "outcome", "exit_code", "reason", "result_complete", "result_size")
    events = [(e["state"], e["exit_code"], e["reason"]) for e in task_events(master, task_id)][-12:]
    text = f"master row {({k: row.get(k) for k in keep})}; last events {events}"
    if node is not None:
        text += f"; node log tail:\n{node.log.read_text(errors='replace')[-3000:]}"
    return text


def wait_task(master: DevMaster, task_id: str, until: Callable[[dict], bool], timeout: float, what: str,
              node: Node | None = None, interval: float = 0.25) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = task_row(master, task_id)
        if until(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {task_id} {what}: "
                                 f"{describe(master, task_id, node)}")
        time.sleep(interval)


def wait_final(master: DevMaster, task_id: str, timeout: float, node: Node | None = None) -> dict:
    return wait_task(master, task_id, lambda r: r["state"] in FINAL, timeout, "to settle", node)


def node_tasks(node: Node) -> dict:
    """`hivemind-worker tasks --json` of the node: {"tasks": [...], "history": [...]}."""
    done = cli("tasks", "--json", env=node.env)
    assert done.returncode == 0, f"hivemind-worker tasks failed: {done.stderr}"
    return json.loads(done.stdout)


def node_status(node: Node, task_id: str) -> str:
    """The task's status as the node's monitor says it ('' when it is gone from there)."""
    listing = node_tasks(node)
    for t in listing["tasks"]:
        if t["task_id"] == task_id:
            return str(t["status"])
    for h in listing["history"]:
        if h["task_id"] == task_id:
            return str(h["state"])
    return ""


# Node statuses once the task's process has ended (tasks.model.TaskStatus.finished).
ENDED = {"exited", "failed", "cancelled", "timed_out", "oom_killed", "lost", "uploading", "done", "rejected"}


def node_finished(node: Node, task_id: str) -> bool:
    """The node has seen the task's process end: its task list says so, or its history
    has a finish time."""
    listing = node_tasks(node)
    return (any(t["task_id"] == task_id and str(t["status"]) in ENDED for t in listing["tasks"])
            or any(h["task_id"] == task_id and h.get("finished_ms") for h in listing["history"]))


def log_lines(master: DevMaster, task_id: str) -> list[dict]:
    """Every stored line (seq, stream, text, time_ms) in seq order; the master keeps them as chunks."""
    with closing(sqlite3.connect(f"file:{master.state / 'state.db'}?mode=ro", uri=True, timeout=10)) as conn:
        return logstore.logs_after(conn, task_id, 0, limit=10**9)


def assert_lines_once(master: DevMaster, task_id: str, expected: list[str], prefix: str = "line ",
                      complete: bool = True) -> None:
    """Seqs 1..N without gap; the task's own lines (those starting with `prefix`) are
    exactly `expected`, in order: none lost, none twice. With complete=False (a task
    that was stopped) they are the start of `expected`."""
    rows = log_lines(master, task_id)
    seqs = [r["seq"] for r in rows]
    if seqs != list(range(1, len(seqs) + 1)):
        gaps = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))
        raise AssertionError(f"{task_id}: log seqs are not 1..N: {len(seqs)} stored, max {seqs[-1] if seqs else 0}, "
                             f"first missing {gaps[:10]}")
    got = [r["text"].rstrip("\n") for r in rows if r["text"].startswith(prefix)]
    if not complete:
        expected = expected[:len(got)]
    if got != expected:
        missing = sorted(set(expected) - set(got))
        twice = len(got) - len(set(got))
        raise AssertionError(f"{task_id}: {len(got)} task lines stored, {len(expected)} expected; "
                             f"{len(missing)} missing (first {missing[:5]}), {twice} duplicated; "
                             f"first stored {got[:3]}, last {got[-3:]}")


def result_archive(master: DevMaster, task_id: str) -> Path:
    """The master's result archive for the task, checked whole: complete, no .part left,
    the bytes match the size and sha256 the master recorded."""
    row = task_row(master, task_id)
    results = master.state / "results"
    path = results / f"{task_id}.tar.gz"
    assert row["result_complete"], f"no complete result: {describe(master, task_id)}"
    assert path.is_file(), f"{path} missing though the master says the result is complete"
    assert not list(results.glob(f"{task_id}*.part")), f"a partial upload of {task_id} is left behind"
    data = path.read_bytes()
    assert len(data) == row["result_size"], f"archive is {len(data)} bytes, the master recorded {row['result_size']}"
    assert hashlib.sha256(data).hexdigest() == row["result_sha256"], "archive sha256 differs from the recorded one"
    with tarfile.open(path) as tar:  # readable to the end: not truncated
        tar.getmembers()
    return path


class Waiter:
    """`hivemind-worker submit ARGS --wait`, running; output to files (a flood of log
    lines must not block it on a full pipe)."""

    def __init__(self, master: DevMaster, out: Path, *args: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = out / "submit.out", out / "submit.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hivemind_worker", "submit", *args, "--state-dir", str(master.state),
             "--wait", "--output", str(out)],
            stdout=self.stdout.open("w"), stderr=self.stderr.open("w"), text=True,
        )

    @property
    def task_id(self) -> str:
        """The id `submit --wait` announces on stderr before anything else."""
        def announced():
            assert self.proc.poll() is None or self.stderr.read_text(), "submit exited silently"
            first = self.stderr.read_text().partition("\n")
            return first[1] and first[0].split()[1].rstrip(";")
        return wait_for(announced, 30, "submit to print the task id")

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Its exit code and output; it must return promptly once the master knows the outcome."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"submit --wait still running {timeout:.0f} s after the task settled; "
                                 f"stderr: {self.stderr.read_text()[-2000:]}")
        return self.proc.returncode, self.stdout.read_text(), self.stderr.read_text()


def connect(master: DevMaster, node: Node, timeout: float = 60) -> None:
    assert node.enroll(master).returncode == 0
    node.start()
    wait_connected(master, node, timeout)


def wait_connected(master: DevMaster, node: Node, timeout: float = 60) -> None:
    node_id = node.node_id()
    wait_for(lambda: any(r["node_id"] == node_id and r["session_state"] == "connected"
                         for r in db_rows(master, "SELECT node_id, session_state FROM nodes")),
             timeout, "the node's session with the master")


def assert_healthy(master: DevMaster, node: Node, timeout: float = 180) -> str:
    """The node is alive and runs a follow-up task to the end."""
    assert node.proc.poll() is None, f"the worker daemon exited ({node.proc.returncode})"
    task_id = master.submit("--command", "python3 -c \"print('line healthy')\"", "--cpus", "0.5", "--memory", "128m")
    row = wait_final(master, task_id, timeout, node)
    assert (row["state"], row["outcome"], row["exit_code"]) == ("done", "exited", 0), describe(master, task_id, node)
    assert_lines_once(master, task_id, ["line healthy"])
    result_archive(master, task_id)
    return task_id


def assert_agree(master: DevMaster, node: Node, timeout: float = 30) -> None:
    """`hivemind-worker tasks` on the node and `dev-master tasks` agree on every task of
    this node: both see it settled with the same outcome and exit code, or both see it
    still going. Polled briefly: the node's view and the master's are a report apart."""
    def check() -> str:
        master_rows = {t["task_id"]: t for t in json.loads(master.run("tasks", "--json"))
                       if t.get("node_id") == node.node_id()}
        listing = node_tasks(node)
        active = {t["task_id"]: t for t in listing["tasks"]}
        history = {h["task_id"]: h for h in listing["history"]}
        problems = []
        for task_id, m in master_rows.items():
            settled = m["state"] in FINAL
            said = f"master {m['state']}/{m['outcome']} exit {m['exit_code']} ({m['reason']!r})"
            if settled and task_id in active:
                problems.append(f"{task_id}: {said}, node still has it as {active[task_id]['status']}")
            elif settled and m["outcome"]:
                h = history.get(task_id)
                if h is None:
                    problems.append(f"{task_id}: {said}, not in the node's history")
                elif (h["state"], h["exit_code"]) != (m["outcome"], m["exit_code"]):
                    problems.append(f"{task_id}: {said}, node {h['state']} exit {h['exit_code']} ({h.get('reason')!r})")
            elif not settled and task_id not in active:
                problems.append(f"{task_id}: {said}, the node does not hold it")
        for task_id, t in active.items():
            if task_id not in master_rows:
                problems.append(f"{task_id}: the node holds it ({t['status']}), the master does not know it here")
        return "; ".join(problems)

    deadline = time.monotonic() + timeout
    while (problems := check()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not problems, f"node and master disagree: {problems}"


COUNTER = """\
import os, sys, time
n = int(os.environ["LINES"])
for i in range(1, n + 1):
    print(f"line {i}", flush=n < 1000)
    if float(os.environ["PAUSE"]):
        time.sleep(float(os.environ["PAUSE"]))
with open(os.path.join(os.environ["HIVEMIND_OUTPUT_DIR"], "done.txt"), "w") as fh:
    fh.write(f"{n} lines")
sys.exit(int(os.environ["EXIT"]))
"""


def bundle(tmp_path, delay: float = 0.0) -> Path:
    """A bundle whose main.py prints LINES lines "line i" (PAUSE s apart), writes
    output/done.txt and exits with EXIT; it sleeps `delay` s first."""
    b = tmp_path / "bundle"
    b.mkdir()
    script = COUNTER if not delay else f"import time\ntime.sleep({delay})\n" + COUNTER
    (b / "main.py").write_text(script)
    return b
