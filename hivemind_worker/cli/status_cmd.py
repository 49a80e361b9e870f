"""`hivemind-worker status`: the local daemon's summary in the terminal."""

from __future__ import annotations

import asyncio
import json

import typer

from hivemind_worker.cli.common import echo_safe, settings_from


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
    peers = _tunnel_peers(settings)
    if as_json:
        doc = result.status if result.running else {"running": False, "error": result.error, **result.offline}
        typer.echo(json.dumps({**doc, "tunnel_peers": peers}, indent=2, sort_keys=True))
    else:
        for line in format_status(result):
            echo_safe(line)  # task names and reasons come from the master and tasks
        for line in peers:
            typer.echo("  Tunnel     " + line)
    if not result.running:
        raise typer.Exit(1)


def _tunnel_peers(settings) -> list[str]:
    """Peers, handshake and bytes from `wg show IF dump`. The daemon cannot read
    them (no CAP_NET_ADMIN under systemd); root running `status` can."""
    from hivemind_worker.errors import VpnError
    from hivemind_worker.vpn import tunnel

    try:
        return tunnel.describe_peers(asyncio.run(tunnel.tunnel_status(settings.wireguard_interface)))
    except VpnError:
        return []
