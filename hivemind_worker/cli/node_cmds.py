"""Commands for this node: enroll, run (the daemon), demo."""

from __future__ import annotations

import asyncio
from typing import Optional

import typer

from hivemind_worker.cli.common import GlobalOptions, echo_safe, guard, settings_from


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(enroll)
    app.command()(run)
    app.command()(drain)
    app.command()(tasks)


def enroll(
    ctx: typer.Context,
    master: str = typer.Option(..., "--master", "-m", help="Master address HOST:PORT or https://HOST:PORT."),
    token: str = typer.Option(..., "--token", "-t", help="Enrollment token from the master (single use, short-lived).", envvar="HIVEMIND_ENROLL_TOKEN"),
    ca_hash: Optional[str] = typer.Option(None, "--ca-hash", help="The master's CA pin, sha256:<hex> (printed by the master)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing enrollment."),
) -> None:
    """Enroll this machine with a master (once, with a token from the master).

    Generates the node's WireGuard key pair here (the private key never leaves the
    node), sends the node's facts and public key, and stores the credential, the pinned
    CA and wg0.conf (root's; the service group may read the credential and the CA).
    Every value the master sends is checked against this node's policy first
    (vpn_allow_full_tunnel, vpn_allow_dns, vpn_subnet): nothing is written otherwise."""
    from hivemind_worker.agent.enrollment import enroll_node
    from hivemind_worker.agent.facts import gather_facts
    from hivemind_worker.hostsetup.install import share_with_service

    settings = settings_from(ctx)

    async def go():
        from hivemind_worker.runtime import DockerRuntime

        runtime = DockerRuntime()
        try:
            facts = await gather_facts(runtime)
        finally:
            runtime.close()
        return await enroll_node(settings, master, token, ca_hash, facts, force=force)

    result = guard(lambda: asyncio.run(go()))
    guard(lambda: share_with_service(result.files))
    typer.echo(f"Enrolled as {result.identity.node_id} with {result.identity.master}.")
    typer.echo("Next: `hivemind-worker up` (VPN), then `systemctl start hivemind-worker` (or `hivemind-worker run`).")


def run(ctx: typer.Context) -> None:
    """Run the worker daemon in the foreground (what the systemd unit starts).

    Connects to the master, runs assigned tasks, reports telemetry and serves the
    monitor. SIGTERM drains and exits 0; SIGHUP reloads settings."""
    from hivemind_worker.cli.main import run_daemon  # the same as the short path there

    opts: GlobalOptions = ctx.find_root().obj or GlobalOptions()
    guard(lambda: run_daemon(opts))


def demo(
    ctx: typer.Context,
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary state directory afterwards."),
) -> None:
    """Try it out: a local dev-master, this machine enrolled to it, one sample task.

    Everything runs on loopback in a temporary directory and is stopped afterwards;
    it needs no root when this user can reach Docker. Needs the task image
    (images/task-runtime/build-from-debian.sh, or `sudo scripts/demo.sh` does all)."""
    from hivemind_worker.demo import run_demo

    settings_from(ctx)
    guard(lambda: run_demo(echo=typer.echo, keep=keep))


def drain(
    ctx: typer.Context,
    resume: bool = typer.Option(False, "--resume", help="Take tasks again."),
) -> None:
    """Stop taking new tasks; running ones finish (the daemon keeps running).

    The master is told, so it assigns this node nothing until `drain --resume`.
    Use before maintenance. `systemctl stop` and restarts hand running tasks to the
    next agent (stop_mode = "handoff", the default) or drain them (stop_mode = "drain")."""
    from hivemind_worker.systemd.pidfile import signal_daemon

    settings = settings_from(ctx)
    pid = guard(lambda: signal_daemon(settings.state_dir, draining=not resume))
    if resume:
        typer.echo(f"Resumed (daemon pid {pid}): the node takes tasks again.")
    else:
        typer.echo(f"Draining (daemon pid {pid}): no new tasks; see `hivemind-worker tasks` for the running ones.")


def tasks(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The monitor's /api/tasks and /api/history as JSON."),
) -> None:
    """List the tasks on this node and the recent history (from the running daemon)."""
    import json

    from hivemind_worker.monitor.local_status import format_tasks, read_local_tasks

    settings = settings_from(ctx)
    listing = guard(lambda: read_local_tasks(settings))
    if as_json:
        typer.echo(json.dumps(listing, indent=2, sort_keys=True))
        return
    for line in format_tasks(listing):
        echo_safe(line)  # task ids and reasons come from the master and tasks
