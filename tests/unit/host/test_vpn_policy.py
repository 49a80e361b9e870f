"""The master proposes, the node decides: every VPN value is typed and checked before
wg0.conf is rendered, the parser refuses what would make wg-quick run commands, and
routes / DNS stay within the node's policy (vpn/policy.py, vpn/config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from hivemind_worker.config import load_settings
from hivemind_worker.errors import ConfigError, VpnError
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.vpn.config import check_config_policy, parse_wg_conf, render_wg_conf
from hivemind_worker.vpn.keys import generate_keypair
from hivemind_worker.vpn.policy import VpnPolicy, check_assignment, parse_endpoint

NODE, HUB = generate_keypair(), generate_keypair()
GOOD = VpnAssignment(
    address="10.88.0.2/32", server_public_key=HUB.public_key, endpoint="hub.example.net:51820",
    allowed_ips=("10.88.0.0/24",), persistent_keepalive_s=25, master_address="10.88.0.1:50051",
)


def crafted(**changes) -> VpnAssignment:
    return dataclasses.replace(GOOD, **changes)


# (what the hostile master changes, a piece of the reason the node gives)
HOSTILE = [
    ({"dns": ("10.88.0.1\nPreUp = id > /root/pwned",)}, "dns[0]: contains the control or non-ASCII character U+000A"),
    ({"address": "10.88.0.2/32\nPostUp = id > /root/pwned"}, "address: contains the control"),
    ({"address": "fd00::2%1\nPreUp = touch /x/128"}, "address: contains the control"),
    ({"address": "fd00::2%eth0/128", "allowed_ips": ("fd00::/64",)}, "has an IPv6 scope id"),
    ({"allowed_ips": ("10.88.0.0/24\nPostDown = rm -rf /",)}, "allowed_ips[0]: contains the control"),
    ({"allowed_ips": ("fd00::%x/64",)}, "scope id"),
    ({"endpoint": "hub:51820\nPreUp = id"}, "endpoint: contains the control"),
    ({"endpoint": "hub;id:51820"}, "neither an IP address nor a host name"),
    ({"endpoint": "hub:0"}, "port 1-65535"),
    ({"endpoint": "hub:65536"}, "port 1-65535"),
    ({"endpoint": "fd00::1:51820"}, "IPv6 hosts go in brackets"),
    ({"master_address": "10.88.0.1:50051\nPreUp = id"}, "master_address: contains the control"),
    ({"master_address": "192.0.2.9:50051"}, "not reached through the tunnel"),
    ({"allowed_ips": ("0.0.0.0/0",)}, "0.0.0.0/0 takes all of the host's traffic"),
    ({"allowed_ips": ("::/0",), "address": "fd00::2/128"}, "::/0 takes all of the host's traffic"),
    ({"allowed_ips": ("10.88.0.0/24", "192.168.0.0/16")}, "192.168.0.0/16 reaches beyond the VPN subnet"),
    ({"allowed_ips": ("10.0.0.0/8",)}, "10.0.0.0/8 reaches beyond the VPN subnet"),  # wider than a derived subnet may be
    ({"allowed_ips": ("8.8.8.0/24",), "address": "8.8.8.2/32"}, "8.8.8.0/24 reaches beyond"),  # public: never derived
    ({"allowed_ips": ("8.8.8.0/24",), "address": "8.8.8.2/24"}, "8.8.8.0/24 reaches beyond"),
    ({"allowed_ips": ("10.0.0.0/8",), "address": "10.88.0.2/8"}, "10.0.0.0/8 reaches beyond"),
    ({"server_public_key": "AAAA"}, "server_public_key: not a base64 32-byte key"),
    ({"server_public_key": HUB.public_key + "\nPostUp = id"}, "server_public_key: contains the control"),
    ({"persistent_keepalive_s": 2**32 - 1}, "persistent_keepalive_s: 4294967295 is not 0-3600"),
    ({"address": "10.88.0.2/32" + " " * 5000}, "address: 5012 characters"),
    ({"allowed_ips": tuple(f"10.88.{i // 256}.{i % 256}/32" for i in range(100))}, "allowed_ips: 100 entries"),
    ({"dns": ("1.1.1.1",) * 9}, "dns: 9 entries"),
    ({"dns": ("resolver.example",)}, "dns[0]: 'resolver.example' is not an IP address"),
    ({"address": "10.88.0.300/32"}, "address: '10.88.0.300/32' is not an IP address"),
    ({"allowed_ips": ("10.88.0.1/24",)}, "is not an IP address or CIDR network like 10.88.0.0/24"),
    ({"address": "", "server_public_key": ""}, "address, server_public_key missing"),
]


@pytest.mark.parametrize(("changes", "reason"), HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_assignment_is_refused_with_the_field_named(changes, reason):
    with pytest.raises(VpnError) as info:
        render_wg_conf(NODE.private_key, crafted(**changes))
    message = str(info.value)
    assert reason in message, message
    assert "Nothing was written" in message and "ask the master's operator" in message


def test_good_assignment_renders_only_canonical_values():
    text = render_wg_conf(NODE.private_key, crafted(dns=("10.88.0.1",)))
    assert "DNS" not in text  # the master's DNS is ignored by default
    assert "Endpoint = hub.example.net:51820" in text and "AllowedIPs = 10.88.0.0/24" in text
    config = parse_wg_conf(text)
    assert config.addresses == ("10.88.0.2/32",) and config.peers[0].public_key == HUB.public_key
    assert check_assignment(crafted(dns=("10.88.0.1",)), VpnPolicy()).dropped_dns[0].compressed == "10.88.0.1"


def test_dns_only_when_the_operator_allows_it():
    text = render_wg_conf(NODE.private_key, crafted(dns=("10.88.0.1", "fd00::53")), VpnPolicy(allow_dns=True))
    assert "DNS = 10.88.0.1, fd00::53\n" in text


def test_vpn_subnet_setting_pins_routes_and_address():
    policy = VpnPolicy(subnet=__import__("ipaddress").ip_network("10.88.0.0/25"))
    with pytest.raises(VpnError, match="10.88.0.0/24 reaches beyond the VPN subnet"):
        render_wg_conf(NODE.private_key, GOOD, policy)
    with pytest.raises(VpnError, match="outside vpn_subnet"):
        render_wg_conf(NODE.private_key, crafted(address="10.88.0.200/32", allowed_ips=("10.88.0.0/26",)), policy)
    render_wg_conf(NODE.private_key, crafted(allowed_ips=("10.88.0.0/26",)), policy)


def test_address_network_is_the_subnet_and_full_tunnel_is_opt_in():
    render_wg_conf(NODE.private_key, crafted(address="10.88.0.2/24", allowed_ips=("10.88.0.0/24",)))
    with pytest.raises(VpnError, match="10.88.1.0/24 reaches beyond"):
        render_wg_conf(NODE.private_key, crafted(address="10.88.0.2/24", allowed_ips=("10.88.1.0/24",)))
    text = render_wg_conf(NODE.private_key, crafted(allowed_ips=("0.0.0.0/0", "::/0")), VpnPolicy(allow_full_tunnel=True))
    assert "AllowedIPs = 0.0.0.0/0, ::/0" in text


def test_endpoints():
    assert str(parse_endpoint("e", "[fd00::1]:51820")) == "[fd00::1]:51820"
    assert str(parse_endpoint("e", "192.0.2.1:1")) == "192.0.2.1:1"
    for bad in ("[192.0.2.1]:5", "[fd00::1:5", "-hub:5", "hub..x:5", "a" * 64 + ".x:5", ":5", "hub:"):
        with pytest.raises(VpnError):
            parse_endpoint("e", bad)


BASE = render_wg_conf(NODE.private_key, GOOD)


@pytest.mark.parametrize(("line", "reason"), [
    ("PreUp = id > /root/pwned", "PreUp: refused: wg-quick runs it as a command as root"),
    ("PostUp = id", "PostUp: refused"),
    ("postdown = id", "PostDown: refused"),
    ("PreDown = id", "PreDown: refused"),
    ("SaveConfig = true", "SaveConfig: refused"),
    ("Table = off", "Table: refused"),
    ("Frobnicate = 1", "Frobnicate: not a valid key"),
    ("DNS = 10.88.0.1, corp.example", "DNS: 'corp.example' is not an IP address"),
    ("Address = fd00::2%eth0/128", "scope id"),
    ("MTU = 1420\r", "control or non-ASCII character U+000D"),
    ("MTU = 1420 \x1c PostUp = id", "U+001C"),
    ("# caf\u00e9 \u2028PostUp = id", "U+00E9"),
])
def test_parser_refuses_commands_unknown_keys_and_control_characters(line, reason):
    text = BASE.replace("[Peer]", line + "\n\n[Peer]")
    with pytest.raises(VpnError) as info:
        parse_wg_conf(text, "/etc/hivemind-worker/wg0.conf")
    assert reason in str(info.value)
    assert "wg0.conf line 7: " in str(info.value)


def test_up_policy_on_a_hand_written_file():
    config = parse_wg_conf(BASE.replace("AllowedIPs = 10.88.0.0/24", "AllowedIPs = 0.0.0.0/0"))
    with pytest.raises(VpnError, match="0.0.0.0/0 takes all.*vpn_allow_full_tunnel"):
        check_config_policy(config, VpnPolicy())
    check_config_policy(config, VpnPolicy(allow_full_tunnel=True))
    dns = parse_wg_conf(BASE.replace("[Peer]", "DNS = 10.88.0.1\n[Peer]"))
    with pytest.raises(VpnError, match="rewrite the host's resolver.*vpn_allow_dns = true"):
        check_config_policy(dns, VpnPolicy())
    check_config_policy(dns, VpnPolicy(allow_dns=True))


def test_settings(tmp_path):
    s = load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path), "HIVEMIND_VPN_ALLOW_DNS": "yes",
                               "HIVEMIND_VPN_SUBNET": "10.88.0.0/24"})
    policy = VpnPolicy.from_settings(s)
    assert policy.allow_dns and not policy.allow_full_tunnel and str(policy.subnet) == "10.88.0.0/24"
    for bad in ("10.88.0.1/24", "8.8.8.0/24", "nonsense"):
        with pytest.raises(ConfigError, match="vpn_subnet"):
            load_settings(environ={"HIVEMIND_CONFIG_DIR": str(tmp_path), "HIVEMIND_VPN_SUBNET": bad})
