"""`hivemind-worker dev-master ...` (the reference control plane) and `hivemind-worker submit`.

Thin: each command parses its options, calls one devmaster function inside guard()
and prints the result. Every command works on the state directory (SQLite) except
`serve`, the only gRPC server.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from hivemind_worker.cli.common import echo_safe, fail, guard, settings_from

STATE_DIR_HELP = "The dev-master's state directory (default $HIVEMIND_STATE_DIR/dev-master, else ./dev-master-state)."

dev_master = typer.Typer(
    name="dev-master",
    help=(
        "The reference control plane: a small master for tests, the demo and trying a node. "
        "Start it with `dev-master serve`, make a token with `dev-master token create`, "
        "enroll a node with that token and `dev-master ca-hash`, then `hivemind-worker submit` tasks."
    ),
    no_args_is_help=True,
)
token_app = typer.Typer(name="token", help="Enrollment tokens.", no_args_is_help=True)
nodes_app = typer.Typer(name="nodes", help="Enrolled nodes: list them (default), drain or revoke one.")
dev_master.add_typer(token_app)
dev_master.add_typer(nodes_app)


def register(app: typer.Typer) -> None:
    app.add_typer(dev_master)
    app.command()(submit)


def _state(path: Optional[Path]):
    from hivemind_worker.devmaster.layout import resolve_state_dir

    return resolve_state_dir(path)


def _db(path: Optional[Path], create: bool = False):
    from hivemind_worker.devmaster.db import open_db

    state = _state(path)
    if create:
        state.create()
    else:
        guard(state.require)
    return state, open_db(state.db)


StateDirOpt = typer.Option(None, "--state-dir", "-s", help=STATE_DIR_HELP, envvar="HIVEMIND_DEV_MASTER_DIR")


@dev_master.command(help="Serve the control protocol (TLS; prints the address and the CA hash, then logs). Ctrl-C or SIGTERM stops it.")
def serve(
    ctx: typer.Context,
    state_dir: Optional[Path] = StateDirOpt,
    listen: str = typer.Option("127.0.0.1:50051", "--listen", "-l", help="HOST:PORT to listen on (port 0 picks a free one)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain text instead of TLS; loopback addresses only."),
    wireguard: bool = typer.Option(False, "--wireguard", help="Also run a WireGuard hub (needs root) and give nodes its key and endpoint."),
    wg_endpoint: str = typer.Option("", "--wg-endpoint", help="Host nodes dial for the WireGuard hub (default: the listen host)."),
    wg_port: int = typer.Option(51820, "--wg-port", help="UDP port of the WireGuard hub."),
    max_message_bytes: int = typer.Option(4 * 1024 * 1024, "--max-message-bytes", help="Largest gRPC message accepted or sent, in bytes."),
    report_interval: int = typer.Option(30, "--report-interval", help="Seconds between telemetry reports, told to nodes at enrollment."),
    vpn_subnet: str = typer.Option("10.88.0.0/24", "--vpn-subnet", help="Addresses handed to nodes; the first one is the hub's."),
    tls_name: List[str] = typer.Option([], "--tls-name", help="Another name or address nodes dial (e.g. behind NAT); repeatable."),
    max_retries: int = typer.Option(2, "--max-retries", help="How many times a lost task runs again (unless submitted with --no-retry)."),
    defer_limit: str = typer.Option("10m", "--defer-limit", help="A task nodes keep deferring (\"not now\") ends rejected after this long."),
    node_lost_after: str = typer.Option("5m", "--node-lost-after", help="A node without a session this long loses its unfinished tasks (they run again elsewhere)."),
    max_result_bytes: str = typer.Option("2g", "--max-result-bytes", help="Largest result archive accepted from a node, e.g. 500m or 2g."),
    max_log_lines: int = typer.Option(1_000_000, "--max-log-lines", help="Log lines stored per task; later ones are dropped (the log says so)."),
    max_log_bytes: str = typer.Option("256m", "--max-log-bytes", help="Log bytes stored per task; later lines are dropped (the log says so)."),
    max_log_line_bytes: str = typer.Option("64k", "--max-log-line-bytes", help="A longer log line is cut to this size."),
) -> None:
    from hivemind_worker.devmaster import server
    from hivemind_worker.devmaster.attempts import RetryPolicy
    from hivemind_worker.devmaster.layout import parse_duration, parse_size, split_listen
    from hivemind_worker.devmaster.registry import hub_address
    from hivemind_worker.devmaster.taskdb import LogLimits

    settings_from(ctx, daemon=True)
    config = server.MasterConfig(
        state_dir=_state(state_dir).root, listen=listen, insecure=insecure,
        max_message_bytes=max_message_bytes, heartbeat_s=report_interval, vpn_subnet=vpn_subnet,
        # Nodes dial the hub's endpoint host too: it must be in the server certificate.
        extra_hosts=tuple(tls_name) + ((wg_endpoint,) if wireguard and wg_endpoint else ()),
        retry=RetryPolicy(max_retries=max_retries, defer_limit_s=guard(lambda: parse_duration(defer_limit, "--defer-limit")),
                          node_lost_after_s=guard(lambda: parse_duration(node_lost_after, "--node-lost-after"))),
        max_result_bytes=guard(lambda: parse_size(max_result_bytes, "--max-result-bytes")),
        log_limits=LogLimits(max_lines=max_log_lines, max_bytes=guard(lambda: parse_size(max_log_bytes, "--max-log-bytes")),
                             max_line_bytes=guard(lambda: parse_size(max_log_line_bytes, "--max-log-line-bytes"))),
    )
    guard(config.validate)
    hub = None
    if wireguard:
        from hivemind_worker.fsutil import atomic_write
        from hivemind_worker.vpn.hub import WireGuardHub
        from hivemind_worker.vpn.keys import generate_keypair

        host = wg_endpoint or guard(lambda: split_listen(listen))[0]
        if host in ("0.0.0.0", "::"):
            raise fail("--wireguard with a wildcard --listen needs --wg-endpoint HOST (the address nodes dial)")
        state = _state(state_dir).create()
        # The hub keeps its key across restarts: enrolled nodes have its public key in wg0.conf.
        key_file = state.root / "wg-hub.key"
        if not key_file.exists():
            atomic_write(key_file, generate_keypair().private_key + "\n", mode=0o600)
        hub = WireGuardHub(listen_port=wg_port, address=hub_address(vpn_subnet), endpoint_host=host,
                           work_dir=state.root, private_key=key_file.read_text().strip())
        guard(hub.up)

    def ready(master) -> None:
        typer.echo(f"dev-master listening on {master.address} ({'plain text' if config.insecure else 'TLS'})")
        typer.echo(f"CA hash: {master.ca_hash}")
        typer.echo(f"state: {master.state.root}")
        sys.stdout.flush()

    guard(lambda: server.run(config, hub, ready))


@dev_master.command("ca-hash", help="Print the CA pin, sha256:<hex> (creates the CA if there is none yet).")
def ca_hash(state_dir: Optional[Path] = StateDirOpt) -> None:
    from hivemind_worker.devmaster import ca

    state = _state(state_dir)
    guard(lambda: ca.ensure_ca(state))
    typer.echo(guard(lambda: ca.ca_hash(state)))


@token_app.command("create", help="Issue an enrollment token; prints the token alone on stdout.")
def token_create(
    state_dir: Optional[Path] = StateDirOpt,
    ttl: str = typer.Option("1h", "--ttl", help="How long the token is valid: 30s, 10m, 1h, 2d."),
    uses: int = typer.Option(1, "--uses", help="How many nodes may enroll with it."),
) -> None:
    from hivemind_worker.devmaster import registry
    from hivemind_worker.devmaster.layout import parse_duration

    seconds = guard(lambda: parse_duration(ttl, "--ttl"))
    _, conn = _db(state_dir, create=True)
    typer.echo(guard(lambda: registry.create_token(conn, seconds, uses)))


def _ago(t: Optional[float]) -> str:
    if not t:
        return "-"
    delta = max(0, time.time() - t)
    return f"{delta:.0f}s ago" if delta < 120 else f"{delta / 60:.0f}m ago" if delta < 7200 else f"{delta / 3600:.0f}h ago"


@nodes_app.callback(invoke_without_command=True)
def nodes(
    ctx: typer.Context,
    state_dir: Optional[Path] = StateDirOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON array, for scripts."),
) -> None:
    """List enrolled nodes: id, hostname, session state, last report, draining (and why)."""
    if ctx.invoked_subcommand is not None:
        return
    from hivemind_worker.devmaster import registry

    _, conn = _db(state_dir)
    rows = registry.list_nodes(conn)
    if as_json:
        for row in rows:
            row["session"] = row["session_state"]
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'NODE':14} {'HOSTNAME':20} {'ADDRESS':16} {'SESSION':13} {'LAST REPORT':12} DRAINING")
    for r in rows:
        echo_safe(f"{r['node_id']:14} {r['hostname'][:20]:20} {r['vpn_address']:16} {r['session_state']:13} "
                   f"{_ago(r['last_report_at']):12} "
                   f"{('yes (' + r['drain_reason'] + ')' if r['drain_reason'] else 'yes') if r['draining'] else 'no'}")


@nodes_app.command("revoke", help="Revoke a node's credential; its open session ends and it must re-enroll.")
def nodes_revoke(node_id: str = typer.Argument(..., help="The node id (see `dev-master nodes`)."),
                 state_dir: Optional[Path] = StateDirOpt) -> None:
    from hivemind_worker.devmaster import registry

    _, conn = _db(state_dir)
    if not registry.revoke(conn, node_id):
        raise fail(f"no enrolled, unrevoked node {node_id!r}; see `hivemind-worker dev-master nodes`")
    typer.echo(f"revoked {node_id}")


@nodes_app.command("drain", help="Stop giving a node tasks and tell it to drain (its running tasks finish).")
def nodes_drain(node_id: str = typer.Argument(..., help="The node id (see `dev-master nodes`)."),
                state_dir: Optional[Path] = StateDirOpt,
                resume: bool = typer.Option(False, "--resume", help="Undo: the node takes tasks again.")) -> None:
    from hivemind_worker.devmaster import registry

    _, conn = _db(state_dir)
    if not registry.request_drain(conn, node_id, not resume):
        raise fail(f"no enrolled, unrevoked node {node_id!r}; see `hivemind-worker dev-master nodes`")
    typer.echo(f"{node_id}: {'resumed' if resume else 'draining'} (told at once if connected, else when it connects)")


@dev_master.command("tasks", help="List tasks: id, attempt, state, node, outcome, exit code, result, reward, reason "
                                   "(--json: also the verified usage record).")
def tasks(state_dir: Optional[Path] = StateDirOpt,
          as_json: bool = typer.Option(False, "--json", help="One JSON array, for scripts.")) -> None:
    from hivemind_worker.devmaster import taskdb

    _, conn = _db(state_dir)
    rows = taskdb.list_tasks(conn)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'TASK':14} {'TRY':3} {'STATE':11} {'NODE':14} {'OUTCOME':11} {'EXIT':5} RESULT  {'REWARD':8} REASON")
    for r in rows:
        exit_code = "-" if r["exit_code"] is None else str(r["exit_code"])
        reward = "-" if r["reward"] is None else f"{r['reward']:.2f}"  # "-": no verified usage record
        echo_safe(f"{r['task_id']:14} {r['attempt']:<3} {r['state']:11} {r['node_id'] or '-':14} {r['outcome'] or '-':11} "
                   f"{exit_code:5} {'yes' if r['result_complete'] else 'no':7} {reward:8} {r['reason']}")


@dev_master.command("cancel", help="Cancel a task (queued: at once; running: its node is told).")
def cancel(task_id: str = typer.Argument(..., help="The task id."), state_dir: Optional[Path] = StateDirOpt) -> None:
    from hivemind_worker.devmaster import taskdb

    _, conn = _db(state_dir)
    what = taskdb.request_cancel(conn, task_id)
    if what == "unknown":
        raise fail(f"no task {task_id!r}; see `hivemind-worker dev-master tasks`")
    typer.echo({
        "finished": f"{task_id} has already ended; nothing to cancel",
        "cancelled": f"{task_id} cancelled (it had not started)",
        "requested": f"{task_id}: cancellation sent to its node (a lost task is not run again)",
    }[what])


def submit(
    ctx: typer.Context,
    path: Optional[Path] = typer.Argument(None, help="A directory (zipped for you) or a .zip bundle; omit with --command."),
    state_dir: Optional[Path] = StateDirOpt,
    image: str = typer.Option("", "--image", help="Container image (default: the node's task image)."),
    cpus: float = typer.Option(1.0, "--cpus", help="CPU cores (fractions allowed)."),
    memory: str = typer.Option("512m", "--memory", help="Memory limit, e.g. 512m or 2g."),
    gpus: int = typer.Option(0, "--gpus", help="Number of GPUs."),
    timeout: str = typer.Option("10m", "--timeout", help="Kill the task after this long: 30s, 10m, 1h."),
    network: str = typer.Option("none", "--network", help="none (default) or bridge (egress allowed)."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    command: Optional[str] = typer.Option(None, "--command", help="Run this command (shell-split) instead of the bundle's entry point."),
    entrypoint: str = typer.Option("", "--entrypoint", help="File in the bundle to run (default main.py)."),
    env: List[str] = typer.Option([], "--env", "-e", help="K=V for the task's environment (repeatable)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Stream the task's logs, save its result, exit with its exit code."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where --wait saves the result archive (default: .)."),
    no_retry: bool = typer.Option(False, "--no-retry", help="Do not run the task again when it is lost (node gone, engine restarted)."),
) -> None:
    """Queue a task on a dev-master: a directory (zipped for you), a .zip bundle, or --command.

    Prints the task id. With --wait: the task's output on stdout/stderr as it
    arrives, the result archive saved into --output, and the task's exit code as
    ours; a task that was rejected (also: deferred by every node for too long), failed
    or lost (with no retry left) exits 7, cancelled 130, timed out 124, killed for
    memory 137 (the reason on stderr). A lost task runs again (see `dev-master serve
    --max-retries`) unless --no-retry; --wait then follows the new attempt.
    """
    from hivemind_worker.devmaster import submit as core

    settings_from(ctx)
    state = _state(state_dir)
    request = guard(lambda: core.SubmitRequest.build(
        path=path, image=image, cpus=cpus, memory=memory, gpus=gpus, timeout=timeout, network=network,
        priority=priority, command=command, entrypoint=entrypoint, env=env, no_retry=no_retry,
    ))
    task_id = guard(lambda: core.submit(state, request))
    if not wait:
        typer.echo(task_id)
        return
    typer.echo(f"submitted {task_id}; waiting for it (Ctrl-C stops waiting, not the task)", err=True)

    def on_log(stream: str, text: str) -> None:
        echo_safe(text, err=stream in ("stderr", "system"))  # the task's own bytes

    def on_state(message: str) -> None:
        echo_safe(f"[{task_id}] {message}", err=True)

    outcome = guard(lambda: core.wait(state, task_id, output or Path("."), on_log=on_log, on_state=on_state))
    if outcome.result_path is not None:
        typer.echo(f"result: {outcome.result_path}", err=True)
    if outcome.exit_code != 0:
        raise fail(outcome.message, outcome.exit_code)
