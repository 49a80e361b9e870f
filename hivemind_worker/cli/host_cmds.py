"""Host commands: install, up, down, doctor. Thin: parse, build settings, call one
core function (hostsetup, vpn.tunnel, doctor) inside guard(), print its result."""

from __future__ import annotations

import asyncio
import json

import typer

from hivemind_worker.cli.common import GlobalOptions, build_settings, guard, settings_from
from hivemind_worker.systemd.unit import DEFAULT_USER


def install_cmd(
    ctx: typer.Context,
    uninstall: bool = typer.Option(False, "--uninstall", help="Stop and remove the unit (keeps the node's identity)."),
    purge: bool = typer.Option(False, "--purge", help="With --uninstall: also delete identity, state and the user."),
    user: str = typer.Option(DEFAULT_USER, "--user", help="Service user to create and run as."),
    no_enable: bool = typer.Option(False, "--no-enable", help="Write the unit but do not enable it."),
) -> None:
    """Prepare this host: service user (in the docker group), directories, systemd unit. Needs root."""
    from hivemind_worker import hostsetup
    from hivemind_worker.vpn import tunnel

    settings = settings_from(ctx)
    if purge and not uninstall:
        raise typer.BadParameter("--purge only goes with --uninstall")
    if uninstall:
        if purge:  # the tunnel's config is about to go: take the interface down first
            guard(lambda: tunnel.down_sync(settings))
        report = guard(lambda: hostsetup.uninstall(settings, user=user, purge=purge))
    else:
        report = guard(lambda: hostsetup.install(settings, user=user, enable=not no_enable))
    for step in report.steps:
        typer.echo(step)


def up_cmd(
    ctx: typer.Context,
    handshake_timeout: float = typer.Option(20.0, "--handshake-timeout", help="Seconds to wait for a handshake."),
) -> None:
    """Bring the WireGuard tunnel up (validates wg0.conf, waits for a handshake, checks the master). Needs root."""
    from hivemind_worker.vpn import tunnel

    settings = settings_from(ctx)
    result = guard(lambda: asyncio.run(tunnel.up(settings, handshake_timeout)))
    status = result.status
    typer.echo(f"{status.interface}: {'already up' if result.already_up else 'up'}"
               + (" (wg0.conf written from the stored assignment)" if result.rendered else ""))
    for line in tunnel.describe_peers(status):
        typer.echo("  " + line)
    if result.master_checked:
        typer.echo(f"  master {result.master_checked} answers through the tunnel")


def down_cmd(ctx: typer.Context) -> None:
    """Take the WireGuard tunnel down. Needs root."""
    from hivemind_worker.vpn import tunnel

    settings = settings_from(ctx)
    was_up = guard(lambda: asyncio.run(tunnel.down(settings)))
    typer.echo(f"{settings.wg_config.stem}: {'down' if was_up else 'already down'}")


def doctor_cmd(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document for machines."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds each check may take."),
    user: str = typer.Option(DEFAULT_USER, "--user", help="The service user to check."),
) -> None:
    """Check this host: config, enrollment, Docker, GPU, WireGuard, master, unit, port."""
    from hivemind_worker.config import Settings
    from hivemind_worker.doctor import Outcome, run_doctor
    from hivemind_worker.errors import ConfigError
    from hivemind_worker.logs import setup_logging

    # A broken config is one of the doctor's findings, not a reason to stop.
    opts = ctx.find_root().obj or GlobalOptions()
    config_error = None
    try:
        build_settings(opts)
    except ConfigError as exc:
        config_error = str(exc)
    if config_error is None:
        settings = settings_from(ctx)
    else:  # what the environment and flags still say, without the broken file
        try:
            settings = build_settings(opts, read_file=False)
        except ConfigError:  # the environment is broken too: the first error says so
            settings = Settings()
        setup_logging("DEBUG" if opts.debug else "INFO", "text", opts.log_file)
    results = guard(lambda: asyncio.run(
        run_doctor(settings, timeout_s=timeout, user=user, config_error=config_error)))
    if as_json:
        typer.echo(json.dumps({"ok": not any(r.outcome is Outcome.FAIL for r in results),
                               "checks": [r.as_dict() for r in results]}, indent=2))
    else:
        for r in results:
            typer.echo(r.line())
            if r.fix and r.outcome is not Outcome.PASS:
                typer.echo(f"       fix: {r.fix}")
    if any(r.outcome is Outcome.FAIL for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("install")(install_cmd)
    app.command("up")(up_cmd)
    app.command("down")(down_cmd)
    app.command("doctor")(doctor_cmd)
