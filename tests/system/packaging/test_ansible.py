"""The example playbook (packaging/ansible/site.yml with its group_vars) against two
booted systemd hosts over SSH on loopback ports: one installs with install.sh, the
other with the .deb. Both end enrolled and connected to one dev-master; the second
run reports changed=0. The enrollment token comes from an Ansible Vault file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.faults.drill import assert_lines_once, bundle, describe, log_lines, result_archive, task_events, task_row, wait_final

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
ANSIBLE = REPO / "packaging" / "ansible"
WHEELHOUSE = "/mnt/wheelhouse"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ansible_lint_production(ansible_venv):
    done = subprocess.run([str(ansible_venv / "bin" / "ansible-lint"), "--offline", "--profile", "production"],
                          cwd=ANSIBLE, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{ansible_venv / 'bin'}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr


def _docker_group(host) -> None:
    """A docker group with the bound host socket's gid, as docker.io makes it on a real
    host: the health gate's doctor checks that the service user reaches the engine."""
    gid = Path("/var/run/docker.sock").stat().st_gid
    host.sh(f"getent group docker || groupadd --system --gid {gid} docker")


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for host, stats in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", stats)}
    return recap


def test_playbook_enrolls_two_hosts_and_is_idempotent(release, boot, ansible_venv, ssh_key, dev_master, deb_package,
                                                      wheelhouse, source_archive, tmp_path):
    names = [f"pk-ans-a-{release[:4]}-{os.getpid()}", f"pk-ans-b-{release[:4]}-{os.getpid()}"]
    ports = [_free_port(), _free_port()]
    pubkey = ssh_key.with_suffix(".pub").read_text()
    with boot(names[0], ssh_port=ports[0], authorized_key=pubkey, binds={str(wheelhouse): WHEELHOUSE}) as a, \
            boot(names[1], ssh_port=ports[1], authorized_key=pubkey) as b:
        timings = {"boot_a_s": a.timings["boot_s"], "boot_b_s": b.timings["boot_s"]}
        for host in (a, b):  # sshd up on its port
            host.sh(f"for i in $(seq 50); do ss -ltn | grep -q ':{host.ssh_port} ' && exit 0; sleep 0.2; done; exit 1")
            _docker_group(host)

        common = (f"ansible_host=127.0.0.1 ansible_user=root ansible_become=false "
                  f"ansible_python_interpreter=/usr/bin/python3 ansible_ssh_private_key_file={ssh_key} "
                  f"hivemind_worker_master={dev_master.address} hivemind_worker_ca_hash={dev_master.ca_hash} ")
        inventory = tmp_path / "inventory.ini"
        inventory.write_text(
            "[hivemind_workers]\n"
            f"{a.name} ansible_port={a.ssh_port} {common} hivemind_worker_install_method=install_sh "
            f"hivemind_worker_source_archive={source_archive} hivemind_worker_wheelhouse={WHEELHOUSE} "
            f"hivemind_worker_monitor_port={_free_port()}\n"
            f"{b.name} ansible_port={b.ssh_port} {common} hivemind_worker_install_method=package "
            f"hivemind_worker_package_file={deb_package} hivemind_worker_monitor_port={_free_port()} "
            "hivemind_worker_max_cpus=1 hivemind_worker_max_memory_bytes=1073741824\n"
        )
        password = tmp_path / "vault-password"
        password.write_text("packaging-tests\n")
        vault = tmp_path / "vault.yml"
        vault.write_text(f'vault_hivemind_enroll_token: "{dev_master.token(uses=2)}"\n')
        bin_dir = ansible_venv / "bin"
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
               "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null",
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}
        subprocess.run([str(bin_dir / "ansible-vault"), "encrypt", "--vault-password-file", str(password), str(vault)],
                       check=True, capture_output=True, env=env, timeout=60)
        assert vault.read_text().startswith("$ANSIBLE_VAULT")

        def play() -> tuple[subprocess.CompletedProcess, float]:
            started = time.monotonic()
            done = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inventory), "site.yml",
                                   "-e", f"@{vault}", "--vault-password-file", str(password)],
                                  cwd=ANSIBLE, capture_output=True, text=True, env=env, timeout=600)
            return done, time.monotonic() - started

        first, timings["first_run_s"] = play()
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        rows = dev_master.wait_connected(set(names))
        assert len({r["node_id"] for r in rows}) == 2
        for host in (a, b):
            assert host.sh("systemctl is-active hivemind-worker").stdout.strip() == "active"
            toml = host.sh("cat /etc/hivemind-worker/worker.toml").stdout
            assert "task_image" in toml and "Ansible managed" in toml
        assert b.sh("dpkg-query -W -f='${Status}' hivemind-worker").stdout == "install ok installed"
        assert "max_cpus = 1.0" in b.sh("cat /etc/hivemind-worker/worker.toml").stdout
        assert a.sh("readlink /usr/local/bin/hivemind-worker").stdout.strip() == "/opt/hivemind-worker/bin/hivemind-worker"
        pids = [h.sh("systemctl show -P MainPID hivemind-worker").stdout for h in (a, b)]

        second, timings["second_run_s"] = play()
        assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-3000:]
        recap = _recap(second.stdout)
        assert set(recap) == set(names), second.stdout[-3000:]
        assert all(stats["changed"] == 0 and stats["failed"] == 0 for stats in recap.values()), second.stdout[-6000:]
        assert [h.sh("systemctl show -P MainPID hivemind-worker").stdout for h in (a, b)] == pids
        assert {r["node_id"] for r in dev_master.nodes() if r["hostname"] in names} == {r["node_id"] for r in rows}
    print(f"ansible timings: { {k: round(v, 1) for k, v in timings.items()} }")


@pytest.mark.docker
@pytest.mark.timeout(1800)  # may build the next version's .deb first
def test_playbook_rolls_two_hosts_to_the_next_version(release, boot, ansible_venv, ssh_key, dev_master, deb_package,
                                                      wheelhouse, build_roots, task_image, tmp_path):
    """site.yml upgrades one host at a time (serial 1): drained, upgraded, connected
    and healthy before the next is touched; a second run changes nothing. A task runs
    on the first host when the rollout starts: the role's drain waits for it, so it
    finishes on the old version with its lines once, outcome and result at the master.

    The task runs in the host's engine (the bound socket), so its bind mounts name host
    paths: host a's state directory is a host directory bound at the same path (as in
    test_upgrade_task.py). Host b offers too little CPU for the task (max_cpus), so the
    dev-master places it on a."""
    from tests.system.packaging.conftest import build_deb

    version = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version"))
    following = ".".join(version.split(".")[:-1] + [str(int(version.split(".")[-1]) + 1)])
    next_deb = build_deb(release, wheelhouse, build_roots, version=following)
    names = [f"pk-roll-a-{release[:4]}-{os.getpid()}", f"pk-roll-b-{release[:4]}-{os.getpid()}"]
    ports = [_free_port(), _free_port()]
    pubkey = ssh_key.with_suffix(".pub").read_text()
    # Not under /tmp or /var/tmp: the unit's PrivateTmp= would hide it from the service.
    state = Path(tempfile.mkdtemp(prefix="hivemind-rollout-test.", dir="/var/lib"))
    state.chmod(0o777)  # the service user does not exist yet on the host
    try:
        with boot(names[0], ssh_port=ports[0], authorized_key=pubkey, rw_binds={str(state): str(state)}) as a, \
                boot(names[1], ssh_port=ports[1], authorized_key=pubkey) as b:
            _roll(release, a, b, names, ssh_key, dev_master, deb_package, next_deb, version, following, state,
                  task_image, ansible_venv, tmp_path)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _roll(release, a, b, names, ssh_key, dev_master, deb_package, next_deb, version, following, state, task_image,
          ansible_venv, tmp_path):
    for host in (a, b):
        host.sh(f"for i in $(seq 50); do ss -ltn | grep -q ':{host.ssh_port} ' && exit 0; sleep 0.2; done; exit 1")
        _docker_group(host)
    a.sh("mkdir -p /etc/systemd/system/hivemind-worker.service.d && "
         f"printf '[Service]\\nReadWritePaths={state}\\n' > /etc/systemd/system/hivemind-worker.service.d/state.conf")
    common = (f"ansible_host=127.0.0.1 ansible_user=root ansible_become=false "
              f"ansible_python_interpreter=/usr/bin/python3 ansible_ssh_private_key_file={ssh_key} "
              f"hivemind_worker_master={dev_master.address} hivemind_worker_ca_hash={dev_master.ca_hash} "
              f"hivemind_worker_install_method=package hivemind_worker_drain_wait_s=120 "
              f"hivemind_worker_task_image={task_image} ")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[hivemind_workers]\n" + "".join(
        f"{h.name} ansible_port={h.ssh_port} {common} hivemind_worker_monitor_port={_free_port()}\n" for h in (a, b)))
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / f"{a.name}.yml").write_text(
        "hivemind_worker_extra_config:\n"
        f"  state_dir: {state}\n  report_interval_s: 1.0\n"
        "  pressure_cpu_percent: 100.0\n  pressure_memory_percent: 100.0\n")
    (tmp_path / "host_vars" / f"{b.name}.yml").write_text("hivemind_worker_max_cpus: 0.25\n")
    token = dev_master.token(uses=2)
    bin_dir = ansible_venv / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null",
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}

    def play(deb, ver, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inventory), "site.yml",
                               "-e", f"hivemind_worker_enroll_token={token}", "-e", f"hivemind_worker_package_file={deb}",
                               "-e", f"hivemind_worker_version={ver}"],
                              cwd=ANSIBLE, capture_output=True, text=True, env=env, timeout=900)
        assert (done.returncode == 0) == ok, done.stdout[-8000:] + done.stderr[-3000:]
        return done

    play(deb_package, version)
    rows = dev_master.wait_connected(set(names))
    assert {r["agent_version"] for r in rows} == {version}
    task_id = _start_task(dev_master, a, tmp_path)

    started = time.monotonic()
    rollout = play(next_deb, following).stdout
    took = time.monotonic() - started
    # The drain waited for the task (it still ran when the drain began), and the task
    # ended whole on the node it started on, before the upgrade.
    assert re.search(rf"RETRYING: \[{re.escape(a.name)}\]: Wait for the running tasks to finish", rollout), \
        rollout[-6000:]
    master = SimpleNamespace(state=dev_master.state_dir)  # what tests/faults/drill.py reads
    row = wait_final(master, task_id, 120)
    assert (row["state"], row["outcome"], row["exit_code"], row["attempt"]) == ("done", "exited", 0, 1), \
        f"{describe(master, task_id)}\n{a.journal(lines=120)}"
    assert task_row(master, task_id)["node_id"] == next(r["node_id"] for r in rows if r["hostname"] == a.name)
    assert_lines_once(master, task_id, [f"line {i}" for i in range(1, LINES + 1)])
    with tarfile.open(result_archive(master, task_id)) as tar:
        assert tar.extractfile("output/done.txt").read() == f"{LINES} lines".encode()
    states = [e["state"] for e in task_events(master, task_id)]
    assert states.count("exited") == 1 and states.count("done") == 1, states
    # One batch after the other: a drained, upgraded and checked before b is drained.
    batches = rollout.split("PLAY [HiveMind workers]")[1:]
    assert len(batches) == 2, rollout[-6000:]
    for batch, host in zip(batches, (a, b)):
        for step in ("Stop taking new tasks", "Install the package from the copied file",
                     "Wait until the node is connected", "Check the host (hivemind-worker doctor)"):
            assert re.search(rf"TASK \[[^\]]*{re.escape(step)}[^\]]*\][^\n]*\n(changed|ok): \[{host.name}\]",
                             batch), f"{step} for {host.name}:\n{batch[-4000:]}"
        assert "drained by the operator" in host.journal(lines=300), "the node was drained before the upgrade"
    rows = dev_master.wait_connected(set(names))
    assert {r["agent_version"] for r in rows} == {following}, rows
    for host in (a, b):
        assert host.sh("hivemind-worker --version").stdout.split()[-1] == following

    again = play(next_deb, following)
    recap = _recap(again.stdout)
    assert set(recap) == set(names) and all(s["changed"] == 0 and s["failed"] == 0 for s in recap.values()), \
        again.stdout[-6000:]

    # A host that fails its health check stops the rollout: the first batch's host
    # does not come up on the wanted version, the second host is never touched.
    failed = play(next_deb, "9.9.9", ok=False).stdout
    assert "runs " + following + ", not 9.9.9" in failed, failed[-6000:]
    assert b.name not in failed.split("PLAY RECAP")[0], f"the rollout went on to {b.name}:\n{failed[-6000:]}"
    assert b.sh("hivemind-worker --version").stdout.split()[-1] == following
    print(f"rollout of 2 hosts ({release}), a task draining on the first: {took:.1f} s")


LINES = 40  # a task of LINES numbered lines, one each 0.5 s


def _start_task(dev_master, host, tmp_path) -> str:
    """A task running on `host` (the only node it fits on), its first lines at the master."""
    done = subprocess.run([sys.executable, "-m", "hivemind_worker", "submit", str(bundle(tmp_path)),
                           "--env", f"LINES={LINES}", "--env", "PAUSE=0.5", "--env", "EXIT=0", "--cpus", "0.5",
                           "--memory", "128m", "--state-dir", str(dev_master.state_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip().split()[-1]
    master = SimpleNamespace(state=dev_master.state_dir)
    deadline = time.monotonic() + 120
    while sum(1 for r in log_lines(master, task_id) if r["text"].startswith("line ")) < 2:
        assert time.monotonic() < deadline, f"{describe(master, task_id)}\n{host.journal()}"
        time.sleep(0.5)
    return task_id
