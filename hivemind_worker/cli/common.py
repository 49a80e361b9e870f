"""What every command shares: building settings from the global options,
turning the core's errors into one line on stderr and an exit code, and printing
text a task or a master controls without letting it drive the terminal."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from hivemind_worker.config import Settings, load_settings
from hivemind_worker.errors import WorkerError
from hivemind_worker.logs import setup_logging

if TYPE_CHECKING:  # Typer is imported where a command prints: a plain `run` never loads it (cli/main.py)
    import typer

T = TypeVar("T")

# Terminal escape sequences (CSI incl. 8-bit, OSC, DCS/SOS/PM/APC, two-byte ESC x):
# a task's output, id or reason could otherwise retitle the window, rewrite earlier
# lines, hide text or (on some terminals) answer back with keystrokes.
_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|[ -~]?)"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # C0 (tab kept), DEL, C1
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str, multiline: bool = False) -> str:
    """``text`` without escape sequences and control characters (tab kept; newlines
    too when ``multiline``, else a table row or a log line cannot forge another)."""
    text = _SEQUENCE.sub("", str(text))
    if multiline:
        return _CONTROL_BUT_NEWLINE.sub("", text)
    return _CONTROL.sub("", text.replace("\n", " "))


def echo_safe(text: str, err: bool = False) -> None:
    """typer.echo for lines holding task- or master-controlled text."""
    import typer

    typer.echo(terminal_safe(text), err=err)


@dataclass
class GlobalOptions:
    config: Path | None = None
    debug: bool = False
    log_file: Path | None = None
    master_url: str | None = None
    log_format: str | None = None


def build_settings(opts: GlobalOptions, read_file: bool = True, **overrides: Any) -> Settings:
    """The one way a command (and a SIGHUP reload) gets its Settings: the config file,
    then the environment, then the global flags. Raises ConfigError."""
    flags = {
        "log_level": "DEBUG" if opts.debug else None,
        "log_file": opts.log_file,
        "master_url": opts.master_url,
        "log_format": opts.log_format,
        **overrides,
    }
    return load_settings(flags, config_file=opts.config, read_file=read_file)


def settings_from(ctx: typer.Context, daemon: bool = False, **overrides: Any) -> Settings:
    """Settings for this invocation; sets up logging as a side effect (CLI only).

    One-shot commands log only warnings (their output is their answer) unless
    --debug; long-running ones (``daemon=True``) log at the configured level."""
    opts: GlobalOptions = ctx.find_root().obj or GlobalOptions()
    settings = guard(lambda: build_settings(opts, **overrides))
    level = settings.log_level
    if not daemon and not opts.debug and level in ("DEBUG", "INFO"):
        level = "WARNING"
    setup_logging(level, settings.log_format, settings.log_file)
    return settings


def error_line(message: str) -> str:
    return f"error: {terminal_safe(message, multiline=True)}"  # reasons come from tasks


def fail(message: str, code: int = 1) -> typer.Exit:
    import typer

    typer.echo(error_line(message), err=True)
    return typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run a core call; a WorkerError becomes one line on stderr and its exit code."""
    try:
        return fn()
    except WorkerError as exc:
        logging.getLogger("hivemind_worker.cli").debug("command failed", exc_info=True)
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
