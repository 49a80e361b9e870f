"""Hostile bridge tasks on the real engine: the egress network reaches the "public"
peer only - not the "metadata" address, the "LAN" peer, nor a service on the host
itself. Every address lives in a network namespace this test creates (egress_world.py)
or on this machine; the test network, bridge, chain and routes are its own and are
removed afterwards. The same probe with the node's chain removed reaches everything,
so it is the firewall, not the test set-up, that blocks."""

from __future__ import annotations

import json
import subprocess
import uuid

import docker
import pytest

from hivemind_worker.runtime import DockerRuntime
from hivemind_worker.runtime.egress import EgressFirewall, EgressPolicy
from hivemind_worker.tasks.model import NetworkPolicy

from .conftest import run_to_end
from .egress_world import LAN_PEER, METADATA, PROBE, PUBLIC_PEER, HostService, World

pytestmark = [pytest.mark.docker, pytest.mark.root]


def host_address() -> str:
    """This machine's first global IPv4 address (traffic to it never leaves the host)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True)
    for link in json.loads(out.stdout):
        if not link["ifname"].startswith(("docker", "br-", "veth", "hm")):
            for addr in link.get("addr_info", []):
                return addr["local"]
    pytest.fail("no global IPv4 address on this host")


@pytest.fixture
def egress(docker_client):
    u = uuid.uuid4().hex[:6]
    policy = EgressPolicy(network=f"hm-egt-{u}", bridge=f"hmegt{u}", chain=f"HM-EGT-{u}")
    world = World(policy.bridge).open()
    service = HostService()
    rt = DockerRuntime(client_factory=docker.from_env, egress=policy)
    try:
        yield policy, world, service, rt
    finally:
        rt.close()
        service.close()
        EgressFirewall(policy).remove()
        for net in docker_client.networks.list(names=[policy.network]):
            for c in docker_client.api.containers(all=True, filters={"network": net.id}):
                docker_client.api.remove_container(c["Id"], force=True)
            net.remove()
        world.close()


def targets(world: World, service: HostService, gateway: str) -> dict:
    return {
        "metadata": [METADATA, world.port],
        "lan": [LAN_PEER, world.port],
        "public": [PUBLIC_PEER, world.port],
        "host_gateway": [gateway, service.port],
        "host_address": [host_address(), service.port],
    }


def probe_result(text: str) -> dict:
    line = next(l for l in text.splitlines() if l.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


async def test_bridge_tasks_reach_only_the_public_peer(egress, make_spec, docker_client, task_image):
    policy, world, service, rt = egress
    # The network exists once a bridge task is created; its gateway is a host address.
    # No IPv6 at all (the chain is IPv4): the egress network has none, Docker disables it.
    spec = make_spec(network=NetworkPolicy.BRIDGE, command=("sh", "-c", "cat /proc/net/if_inet6; echo end"))
    assert (await run_to_end(rt, spec)).text().strip() == "end"
    net = docker_client.networks.get(policy.network)
    gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
    assert net.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    where = json.dumps(targets(world, service, gateway))

    ran = await run_to_end(rt, make_spec(network=NetworkPolicy.BRIDGE, command=("python3", "-c", PROBE, where)))
    seen = probe_result(ran.text())
    assert seen["public"] == f"reached:{PUBLIC_PEER}", seen
    for name in ("metadata", "lan", "host_gateway", "host_address"):
        assert seen[name].startswith("blocked:"), (name, seen)

    # Without the node's chain the very same probe reaches everything: the firewall blocks.
    EgressFirewall(policy).remove()
    out = docker_client.containers.run(
        task_image, entrypoint=["python3", "-c", PROBE, where], network=policy.network, remove=True,
        user="65100:65100",
    ).decode()
    open_world = probe_result(out)
    assert open_world == {
        "metadata": f"reached:{METADATA}", "lan": f"reached:{LAN_PEER}", "public": f"reached:{PUBLIC_PEER}",
        "host_gateway": "reached:host", "host_address": "reached:host",
    }, open_world


async def test_the_firewall_is_restored_idempotently(egress, make_spec):
    policy, _, _, rt = egress
    fw = EgressFirewall(policy)
    await run_to_end(rt, make_spec(network=NetworkPolicy.BRIDGE, command=("true",)))
    assert fw.missing() == []
    fw.ensure()
    fw.ensure()
    for chain in ("DOCKER-USER", "INPUT"):
        rules = subprocess.run(["iptables", "-S", chain], capture_output=True, text=True, check=True).stdout
        assert rules.count(f"-i {policy.bridge} -j {policy.chain}") == 1, rules
    # Someone flushes the chain and drops a jump: the next bridge task puts both back.
    subprocess.run(["iptables", "-F", policy.chain], check=True)
    subprocess.run(["iptables", "-D", "INPUT", "-i", policy.bridge, "-j", policy.chain], check=True)
    missing = fw.missing()
    assert any("INPUT" in m for m in missing) and any("169.254.0.0/16" in m for m in missing), missing
    await run_to_end(rt, make_spec(network=NetworkPolicy.BRIDGE, command=("true",)))
    assert fw.missing() == []


async def test_no_firewall_no_bridge_task(egress, make_spec, docker_client):
    """Fail closed: when the rules cannot be installed, the task is not created."""
    from hivemind_worker.errors import TaskError

    policy, _, _, _ = egress

    def refuse(argv, stdin=""):
        if argv[0].startswith("iptables"):
            raise TaskError(f"`{argv[0]}` failed: Permission denied (you must be root)")
        from hivemind_worker.runtime.egress import run_command

        return run_command(argv, stdin)

    rt = DockerRuntime(client_factory=docker.from_env, egress=policy)
    rt._egress = EgressFirewall(policy, run=refuse)
    spec = make_spec(network=NetworkPolicy.BRIDGE, command=("true",))
    try:
        with pytest.raises(TaskError, match="you must be root"):
            await rt.create(spec)
        assert docker_client.api.containers(all=True, filters={"label": f"hivemind.task_id={spec.task_id}"}) == []
    finally:
        rt.close()
