from pathlib import Path

import pytest

from hivemind_worker.address import parse_master_address
from hivemind_worker.config import load_settings
from hivemind_worker.errors import ConfigError


def test_file_then_environment_then_flags(tmp_path: Path):
    (tmp_path / "worker.toml").write_text('master_url = "file.example:1"\nreport_interval_s = 10\nlog_level = "WARNING"\n')
    env = {"HIVEMIND_CONFIG_DIR": str(tmp_path), "MASTER_NODE_URL": "env.example:2", "LOG_LEVEL": "ERROR"}
    s = load_settings({"log_level": "DEBUG"}, environ=env)
    assert s.master_url == "env.example:2"  # environment beats the file
    assert s.report_interval_s == 10.0  # the file beats the default
    assert s.log_level == "DEBUG"  # flags beat everything
    assert s.where("master_url") == "MASTER_NODE_URL"


def test_seed_variables_and_defaults(tmp_path: Path):
    env = {"HIVEMIND_CONFIG_DIR": str(tmp_path), "RESOURCE_REPORT_INTERVAL": "5", "WIREGUARD_CONFIG_PATH": "/x/wg.conf"}
    s = load_settings(environ=env)
    assert s.report_interval_s == 5.0
    assert s.wg_config == Path("/x/wg.conf")
    assert load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)}).report_interval_s == 30.0


@pytest.mark.parametrize(
    "content, message",
    [
        ("report_interval_s = -1\n", "report_interval_s: must be greater than 0"),
        ('report_interval_s = "soon"\n', "report_interval_s"),
        ("colour = 1\n", "unknown key 'colour'"),
        ("this is not toml\n", "not valid TOML"),
        ('log_level = "LOUD"\n', "log_level: must be one of"),
        ("monitor_port = 70000\n", "monitor_port"),
    ],
)
def test_bad_file_names_key_and_file(tmp_path: Path, content: str, message: str):
    (tmp_path / "worker.toml").write_text(content)
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)})
    assert message in str(err.value)
    assert str(tmp_path / "worker.toml") in str(err.value)


def test_bad_environment_names_variable(tmp_path: Path):
    with pytest.raises(ConfigError, match="RESOURCE_REPORT_INTERVAL: report_interval_s"):
        load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path), "RESOURCE_REPORT_INTERVAL": "often"})


def test_missing_explicit_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(environ={}, config_file=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text, host, port, tls",
    [
        ("master.example:50051", "master.example", 50051, True),
        ("https://master.example:7000", "master.example", 7000, True),
        ("http://127.0.0.1:9", "127.0.0.1", 9, False),
        ("master.example", "master.example", 50051, True),
        ("[::1]:5", "::1", 5, True),
    ],
)
def test_master_addresses(text, host, port, tls):
    a = parse_master_address(text)
    assert (a.host, a.port, a.tls) == (host, port, tls)


@pytest.mark.parametrize("text", ["", "ftp://x:1", "host:notaport", "https://h:1/path"])
def test_bad_master_addresses(text):
    with pytest.raises(ConfigError):
        parse_master_address(text)


def test_one_builder_for_every_command_and_the_reload(tmp_path, monkeypatch):
    """cli.common.build_settings: file, then environment, then the global flags; the
    SIGHUP reload calls it again, so --debug survives a reload."""
    from hivemind_worker.cli.common import GlobalOptions, build_settings

    (tmp_path / "worker.toml").write_text("report_interval_s = 7\nlog_level = \"WARNING\"\n")
    monkeypatch.setenv("HIVEMIND_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HIVEMIND_MAX_CONCURRENT_TASKS", "3")
    opts = GlobalOptions(debug=True, log_format="json")
    first, again = build_settings(opts), build_settings(opts)
    assert (first.report_interval_s, first.max_concurrent_tasks, first.log_level, first.log_format) == (7, 3, "DEBUG", "json")
    assert again == first

    # The doctor, when the file is what is broken: still the environment and the flags.
    (tmp_path / "worker.toml").write_text("report_interval_s = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_settings(opts)
    rescued = build_settings(opts, read_file=False)
    assert (rescued.max_concurrent_tasks, rescued.log_level, rescued.report_interval_s) == (3, "DEBUG", 30.0)


def test_a_tls_certificate_needs_its_key(tmp_path):
    with pytest.raises(ConfigError, match="monitor_tls_key"):
        load_settings({"monitor_tls_cert": str(tmp_path / "cert.pem")}, environ={"HIVEMIND_CONFIG_DIR": str(tmp_path)})
