"""Entry point of `hivemind-worker` (and `python -m hivemind_worker`).

A plain `hivemind-worker [global options] run`, what the systemd unit starts, goes
straight to the daemon: Typer, Click and the pydantic Typer validates options with
stay out of the daemon's memory for its whole life (~8 MB of an idle node that
should stay under 55 MB; issue 13). Everything else (other commands, --help,
--version, an option spelled another way) goes to the Typer app in cli/app.py,
which parses the same global options.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hivemind_worker.cli.common import GlobalOptions, build_settings, error_line
from hivemind_worker.errors import WorkerError
from hivemind_worker.logs import setup_logging

# cli/app.py's global options that take a value, as the short path accepts them
# (`--opt VALUE`, `--opt=VALUE`, `-c VALUE`) -> the GlobalOptions field.
_VALUE_OPTIONS = {"--config": "config", "-c": "config", "--log-file": "log_file",
                  "--master-url": "master_url", "--log-format": "log_format"}
_PATHS = {"config", "log_file"}


def plain_run(argv: list[str]) -> GlobalOptions | None:
    """The global options of a plain ``[options] run``; None for anything else, which
    Typer then parses (and reports, for a mistake) as it always has."""
    values: dict[str, Any] = {}
    command: str | None = None
    args = iter(argv)
    for arg in args:
        if command is not None:  # `run` takes no arguments: `run --help` and mistakes go to Typer
            return None
        if arg == "run":
            command = arg
        elif arg == "--debug":
            values["debug"] = True
        elif arg in _VALUE_OPTIONS or arg.partition("=")[0] in _VALUE_OPTIONS and arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq:
                value = next(args, "")
            if not value or value.startswith("-"):  # missing or odd: Typer says what is wrong
                return None
            field = _VALUE_OPTIONS[name]
            values[field] = Path(value) if field in _PATHS else value
        else:
            return None
    if command is None:
        return None
    if "config" not in values and os.environ.get("HIVEMIND_CONFIG"):  # as the option's envvar
        values["config"] = Path(os.environ["HIVEMIND_CONFIG"])
    return GlobalOptions(**values)


def run_daemon(opts: GlobalOptions) -> None:
    """`hivemind-worker run`: the daemon in the foreground until it is told to stop.
    Raises the WorkerError that ended it (a bad setting, not enrolled, ...)."""
    settings = build_settings(opts)
    setup_logging(settings.log_level, settings.log_format, settings.log_file)
    # The daemon's modules (grpc, docker, the monitor) load only for `run`.
    from hivemind_worker.agent.app import run_agent

    # SIGHUP: built as at start (file, environment, these flags: --debug stays on).
    asyncio.run(run_agent(settings, lambda: build_settings(opts)))


def _run_plain(opts: GlobalOptions) -> int:
    """run_daemon with cli.common.guard's mapping: one line on stderr, the error's exit code."""
    try:
        run_daemon(opts)
    except WorkerError as exc:
        logging.getLogger("hivemind_worker.cli").debug("command failed", exc_info=True)
        print(error_line(str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(error_line("interrupted"), file=sys.stderr)
        return 130
    return 0


def main() -> None:
    opts = plain_run(sys.argv[1:])
    if opts is not None:
        sys.exit(_run_plain(opts))
    from hivemind_worker.cli.app import app

    app(prog_name="hivemind-worker")
