"""Every command explains itself: --help works and says something useful."""

import pytest

from tests.conftest import cli

COMMANDS = [
    (), ("demo",), ("enroll",), ("run",), ("tasks",), ("drain",), ("install",), ("up",), ("down",), ("doctor",), ("status",),
    ("submit",), ("dev-master",), ("dev-master", "serve"), ("dev-master", "token", "create"),
    ("dev-master", "ca-hash"), ("dev-master", "nodes"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help(command):
    done = cli(*command, "--help", env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    assert "Usage: hivemind-worker" in done.stdout
    summary = done.stdout.split("Usage:", 1)[1].splitlines()[2].strip()
    assert len(summary) > 15, f"{command}: no summary line"


def test_no_arguments_shows_help_and_bad_option_is_one_clear_error():
    assert "Getting started" in cli(env={"COLUMNS": "100"}).stdout
    done = cli("enroll", "--master", "x:1")
    assert done.returncode == 2 and "--token" in done.stderr
