"""`hivemind-worker status`: the local daemon's summary in the terminal."""

from __future__ import annotations

import json

import typer

from hivemind_worker.cli.common import settings_from


def register(app: typer.Typer) -> None:
    app.command(help=(
        "Show this node's status, read from the running daemon's monitor (monitor_host:monitor_port, "
        "default 127.0.0.1:5001). When the daemon is not running: what is known offline, and exit code 1."
    ))(status)


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the daemon's /api/status as JSON."),
) -> None:
    """Reads the local monitor (monitor_host:monitor_port, default 127.0.0.1:5001).
    Exit code 0 when the daemon answers, 1 when it is not running."""
    from hivemind_worker.monitor.local_status import format_status, read_local_status

    settings = settings_from(ctx)
    result = read_local_status(settings)
    if as_json:
        typer.echo(json.dumps(result.status if result.running else {"running": False, "error": result.error,
                                                                      **result.offline}, indent=2, sort_keys=True))
    else:
        for line in format_status(result):
            typer.echo(line)
    if not result.running:
        raise typer.Exit(1)
