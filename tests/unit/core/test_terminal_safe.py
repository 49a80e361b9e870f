"""Text a task or a master controls reaches a terminal without its escape
sequences: the shared sanitiser, and `dev-master tasks` printing a hostile reason
from a real state directory (a real subprocess, its real stdout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_worker.cli.common import terminal_safe
from tests.conftest import cli

HOSTILE = (
    "\x1b]0;pwned title\x07"          # OSC: retitle the window
    "\x1b[2J\x1b[1;1H"                # CSI: clear the screen, move home
    "ok\x1b[8mhidden\x1b[0m"          # conceal text
    "\x9b31m"                         # 8-bit CSI
    "\x1bP+q544e\x1b\\"               # DCS: a terminfo query some terminals answer
    "\rfake\bline\x07"                # CR, backspace, bell
)


@pytest.mark.parametrize("raw, clean", [
    ("plain text, tabs\tkept", "plain text, tabs\tkept"),
    ("\x1b[31mred\x1b[0m", "red"),
    (HOSTILE, "okhiddenfakeline"),
    ("two\nlines", "two lines"),
    ("üñíçødé ✓", "üñíçødé ✓"),
    ("\x1b", ""),
])
def test_terminal_safe(raw, clean):
    assert terminal_safe(raw) == clean


def test_multiline_keeps_newlines_only():
    assert terminal_safe("a\x1b[2Jb\nc\r\x00", multiline=True) == "ab\nc"


def test_dev_master_tasks_prints_a_hostile_reason_without_escapes(tmp_path: Path):
    from hivemind_worker.devmaster import taskdb
    from hivemind_worker.devmaster.db import open_db
    from hivemind_worker.devmaster.layout import resolve_state_dir

    state = resolve_state_dir(tmp_path / "master")
    state.create()
    conn = open_db(state.db)
    task_id = taskdb.create_task(conn, {"command": ["true"]})
    taskdb.settle(conn, task_id, "rejected", "no node takes it " + HOSTILE)
    conn.close()
    done = cli("dev-master", "tasks", "--state-dir", str(state.root))
    assert done.returncode == 0, done.stderr
    row = [line for line in done.stdout.splitlines() if line.startswith(task_id)]
    assert row and row[0].endswith("no node takes it okhiddenfakeline"), done.stdout
    assert not any(c in done.stdout for c in "\x1b\x9b\x07\r\b"), repr(done.stdout)
