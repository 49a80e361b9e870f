"""The Typer app of `hivemind-worker`: each command group lives in its own module and
registers itself here; the global options are parsed once into GlobalOptions.
cli/main.py starts it (and takes a short path for a plain `run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hivemind_worker import __version__
from hivemind_worker.cli import host_cmds, master_cmds, node_cmds, status_cmd
from hivemind_worker.cli.common import GlobalOptions

app = typer.Typer(
    name="hivemind-worker",
    help=(
        "Worker node of the HiveMind distributed computing platform.\n\n"
        "First run: `hivemind-worker demo`. On a real node: `sudo hivemind-worker install`, "
        "then `hivemind-worker enroll --master HOST:PORT --token TOKEN --ca-hash sha256:...`, "
        "then `systemctl start hivemind-worker`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hivemind-worker {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Config file (default /etc/hivemind-worker/worker.toml).", envvar="HIVEMIND_CONFIG"
    ),
    debug: bool = typer.Option(False, "--debug", help="Log at DEBUG level."),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Write logs to this file instead of stderr."),
    master_url: Optional[str] = typer.Option(None, "--master-url", help="Master address HOST:PORT (overrides the config)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="auto (JSON under systemd), json or text."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    ctx.obj = GlobalOptions(config=config, debug=debug, log_file=log_file, master_url=master_url, log_format=log_format)


for module in (node_cmds, master_cmds, host_cmds, status_cmd):
    module.register(app)

# Group the commands in --help the way a new operator meets them.
_PANELS = {
    "demo": "Getting started",
    "install": "Setting up a node", "enroll": "Setting up a node", "up": "Setting up a node", "down": "Setting up a node",
    "run": "Operating a node", "status": "Operating a node", "doctor": "Operating a node",
    "tasks": "Operating a node", "drain": "Operating a node",
    "dev-master": "Reference control plane", "submit": "Reference control plane",
}
for info in app.registered_commands:
    name = info.name or getattr(info.callback, "__name__", "").removesuffix("_cmd").replace("_", "-")
    info.rich_help_panel = _PANELS.get(name, "Commands")
for group in app.registered_groups:
    group_name = group.name or (group.typer_instance.info.name if group.typer_instance else None)
    group.rich_help_panel = _PANELS.get(str(group_name), "Commands")
