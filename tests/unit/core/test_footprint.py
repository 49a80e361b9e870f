"""A small idle node (issue 13): the daemon's path imports only what an idle node uses.

Heavy modules load where they are used: Typer (and the pydantic it validates options
with) only for commands other than a plain `run`, prometheus_client at the first
/metrics scrape, cryptography where a key is made or a TLS certificate read, pynvml
only where the NVIDIA driver's library is, the JSON log formatter only for JSON lines.
bench/footprint.py measures what that buys; these tests keep it from creeping back.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_worker.cli.common import GlobalOptions
from hivemind_worker.cli.main import plain_run

# Loaded by the idle daemon for nothing: each is used only on demand. (click is not
# here: `import uvicorn` loads it, for uvicorn's own command line; Typer vendors its own.)
ON_DEMAND = ("typer", "pydantic", "rich", "prometheus_client", "cryptography", "pynvml", "pythonjsonlogger")


def _loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {})})
    assert run.returncode == 0, run.stderr
    return [m for m in json.loads(run.stdout.splitlines()[-1]) if m in ON_DEMAND]


def test_the_daemons_modules_load_none_of_the_on_demand_ones():
    # Everything `hivemind-worker run` imports before it serves: the entry point, the
    # assembly of the agent, the monitor app and its server, logging set up as text.
    code = (
        "from hivemind_worker.cli.main import main, run_daemon\n"
        "import hivemind_worker.agent.app, hivemind_worker.monitor.server\n"
        "from hivemind_worker.logs import setup_logging\n"
        "setup_logging('INFO', 'text')\n"
    )
    assert _loaded_after(code) == []


def test_monitor_app_loads_prometheus_only_when_scraped(tmp_path):
    code = (
        "from starlette.testclient import TestClient\n"
        "from hivemind_worker.monitor.app import create_app\n"
        "from tests.unit.core.test_footprint import EmptyView\n"
        "client = TestClient(create_app(EmptyView()), base_url='http://127.0.0.1')\n"
        "assert client.get('/healthz').status_code == 200\n"
        "import sys; assert 'prometheus_client' not in sys.modules, 'loaded before a scrape'\n"
        "r = client.get('/metrics'); assert r.status_code == 200 and b'hivemind_agent_' in r.content, r.text\n"
        "r = client.get('/metrics'); assert r.status_code == 200\n"
    )
    repo = Path(__file__).resolve().parents[3]
    assert "prometheus_client" in _loaded_after(code, {"PYTHONPATH": str(repo)})  # loaded by the scrape


class EmptyView:
    """The smallest NodeView (monitor/view.py): a node with nothing to report yet."""

    def status(self):
        return {"node_id": "n1", "enrolled": True, "version": "0", "hostname": "h", "master": "m:1",
                "started_ms": 0, "draining": False,
                "session": {"state": "connected", "connected": True, "since_ms": 0, "reconnects": 0, "last_error": ""},
                "vpn": {"interface": "wg0", "up": False, "address": "", "latest_handshake_ms": None},
                "docker": {"available": True, "version": "27", "error": ""}, "gpus": []}

    def tasks(self):
        return []

    def task_logs(self, task_id, n):
        return []

    def history(self):
        return []

    def telemetry_series(self):
        return []

    def latest_sample(self):
        return None

    def earnings(self):
        return {}

    def agent_counters(self):
        return {"reconnects_total": 0, "log_lines_sent_total": 0, "log_bytes_sent_total": 0, "results_spooled": 0,
                "telemetry_reports_total": 0}


def test_gpu_telemetry_does_not_load_pynvml_without_the_driver():
    if Path("/dev/nvidiactl").exists():
        pytest.skip("an NVIDIA driver is here: pynvml is rightly loaded")
    code = (
        "from hivemind_worker.telemetry.gpu import GpuCollector\n"
        "gpu = GpuCollector()\n"
        "assert gpu.sample() == () and 'libnvidia-ml' in gpu.unavailable_reason, gpu.unavailable_reason\n"
        "from hivemind_worker.runtime.gpu import NvmlGpuInventory\n"
        "assert NvmlGpuInventory(False).devices() == []\n"
    )
    assert _loaded_after(code) == []


@pytest.mark.parametrize("argv", [
    ["run"],
    ["--debug", "run"],
    ["-c", "/etc/hw.toml", "run"],
    ["--config=/etc/hw.toml", "--log-format", "json", "--master-url", "m:50051", "run"],
    ["--log-file", "/tmp/w.log", "--log-format=text", "--debug", "--config", "a", "--config", "b", "run"],
])
@pytest.mark.parametrize("env_config", [None, "/from/env.toml"])
def test_short_run_path_parses_the_global_options_as_typer_does(argv, env_config, monkeypatch):
    import typer.main

    from hivemind_worker.cli.app import app

    if env_config:
        monkeypatch.setenv("HIVEMIND_CONFIG", env_config)
    else:
        monkeypatch.delenv("HIVEMIND_CONFIG", raising=False)
    command = typer.main.get_command(app)
    ctx = command.make_context("hivemind-worker", list(argv))
    with ctx:
        ctx.invoke(command.callback, **ctx.params)
    assert plain_run(argv) == ctx.obj
    assert isinstance(ctx.obj, GlobalOptions)


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["-h"], ["--version"], ["run", "--help"], ["status"], ["--debug"], ["run", "extra"],
    ["--config"], ["--config", "run"], ["--config", "--debug", "run"], ["-c=/x", "run"], ["-c/x", "run"],
    ["--unknown", "run"], ["run", "run"],
])
def test_anything_but_a_plain_run_goes_to_typer(argv):
    assert plain_run(argv) is None


def test_short_run_path_reports_errors_as_the_cli_does(tmp_path):
    """Not enrolled: the same line on stderr and exit code by the short path and by
    Typer (``-cFILE``, which only Typer parses)."""
    config = tmp_path / "worker.toml"
    config.write_text("")
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(tmp_path / "config"), "HIVEMIND_STATE_DIR": str(tmp_path / "state")}
    env.pop("HIVEMIND_CONFIG", None)
    runs = [subprocess.run([sys.executable, "-m", "hivemind_worker", *argv], env=env, capture_output=True, text=True,
                           timeout=60) for argv in (["-c", str(config), "run"], [f"-c{config}", "run"])]
    assert plain_run(["-c", str(config), "run"]) and not plain_run([f"-c{config}", "run"])
    short, typer_run = runs
    assert short.returncode != 0 and short.returncode == typer_run.returncode
    assert short.stderr.startswith("error: ") and "enroll" in short.stderr, short.stderr
    assert short.stderr == typer_run.stderr
