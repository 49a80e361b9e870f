"""wg0.conf rendering (split tunnel) and validation with line-numbered errors;
WireGuard keys; `wg show dump` parsing."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from hivemind_worker.errors import VpnError
from hivemind_worker.identity import VpnAssignment
from hivemind_worker.vpn.config import parse_wg_conf, render_wg_conf
from hivemind_worker.vpn.keys import decode_key, generate_keypair, public_key_of
from hivemind_worker.vpn.policy import VpnPolicy
from hivemind_worker.vpn.wgtool import parse_dump

NODE, HUB = generate_keypair(), generate_keypair()
ASSIGNMENT = VpnAssignment(
    address="10.88.0.2/32", server_public_key=HUB.public_key, endpoint="192.0.2.1:51820",
    allowed_ips=("10.88.0.0/24",), persistent_keepalive_s=25, master_address="10.88.0.1:50051",
)


def test_keys_are_wireguard_keys():
    assert len(decode_key(NODE.private_key)) == 32
    assert public_key_of(NODE.private_key) == NODE.public_key
    assert NODE.private_key not in repr(NODE)
    if shutil.which("wg"):
        out = subprocess.run(["wg", "pubkey"], input=NODE.private_key, capture_output=True, text=True).stdout
        assert out.strip() == NODE.public_key


def test_render_is_split_tunnel_and_parses_back():
    text = render_wg_conf(NODE.private_key, ASSIGNMENT)
    config = parse_wg_conf(text, "/etc/hivemind-worker/wg0.conf")
    assert config.addresses == ("10.88.0.2/32",)
    assert config.peers[0].allowed_ips == ("10.88.0.0/24",)
    assert config.peers[0].endpoint == "192.0.2.1:51820"
    assert config.peers[0].persistent_keepalive_s == 25
    assert not config.full_tunnel
    assert "0.0.0.0/0" not in text
    assert "DNS" not in text  # no DNS assigned: resolv.conf stays the host's


def test_full_tunnel_only_when_assigned_and_allowed():
    full = VpnAssignment(**{**ASSIGNMENT.__dict__, "allowed_ips": ("0.0.0.0/0",)})
    with pytest.raises(VpnError, match="0.0.0.0/0 takes all of the host's traffic.*vpn_allow_full_tunnel = true"):
        render_wg_conf(NODE.private_key, full)
    text = render_wg_conf(NODE.private_key, full, VpnPolicy(allow_full_tunnel=True))
    assert parse_wg_conf(text).full_tunnel


def test_incomplete_assignment_is_refused():
    with pytest.raises(VpnError, match="allowed_ips missing"):
        render_wg_conf(NODE.private_key, VpnAssignment(**{**ASSIGNMENT.__dict__, "allowed_ips": ()}))
    with pytest.raises(VpnError, match="private key"):
        render_wg_conf("not-a-key", ASSIGNMENT)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (f"PublicKey = {HUB.public_key}", "PublicKey = abc", "wg0.conf line 8: PublicKey: not a base64 32-byte key"),
        ("Address = 10.88.0.2/32", "Address = 10.88.0.300/32", "wg0.conf line 5: Address: '10.88.0.300/32' is not"),
        ("Endpoint = 192.0.2.1:51820", "Endpoint = 192.0.2.1", "wg0.conf line 9: Endpoint: '192.0.2.1' is not HOST:PORT"),
        ("PersistentKeepalive = 25", "PersistentKeepalive = often", "wg0.conf line 11: PersistentKeepalive: expected a whole number"),
        ("[Peer]", "[Peers]", "wg0.conf line 7: unknown section '[Peers]'"),
        ("PersistentKeepalive = 25", "ListenPort = 1", "wg0.conf line 11: ListenPort: not a valid key in [Peer]"),
        ("Address = 10.88.0.2/32", "Address 10.88.0.2/32", "wg0.conf line 5: expected 'Key = value'"),
    ],
)
def test_errors_name_line_and_field(old, new, message):
    text = render_wg_conf(NODE.private_key, ASSIGNMENT).replace(old, new)
    with pytest.raises(VpnError) as info:
        parse_wg_conf(text, "/etc/hivemind-worker/wg0.conf")
    assert message in str(info.value)
    assert "fix /etc/hivemind-worker/wg0.conf" in str(info.value)


def test_missing_sections_and_keys():
    with pytest.raises(VpnError, match="no \\[Interface\\] section"):
        parse_wg_conf("[Peer]\nPublicKey = %s\n" % HUB.public_key)
    with pytest.raises(VpnError, match="line 1: PrivateKey: missing"):
        parse_wg_conf("[Interface]\nAddress = 10.0.0.1/32\n[Peer]\nPublicKey = %s\n" % HUB.public_key)
    with pytest.raises(VpnError, match="no \\[Peer\\] section"):
        parse_wg_conf("[Interface]\nPrivateKey = %s\n" % NODE.private_key)


def test_parse_dump():
    zero = base64.b64encode(bytes(32)).decode()
    text = (
        f"{zero}\t{NODE.public_key}\t0\toff\n"
        f"{HUB.public_key}\t(none)\t192.0.2.1:51820\t10.88.0.0/24\t1700000000\t1234\t5678\t25\n"
    )
    status = parse_dump("wg0", text)
    assert status.up and status.public_key == NODE.public_key and status.listen_port == 0
    peer = status.peers[0]
    assert (peer.endpoint, peer.allowed_ips, peer.latest_handshake, peer.rx_bytes, peer.tx_bytes) == (
        "192.0.2.1:51820", ("10.88.0.0/24",), 1700000000, 1234, 5678)
    assert status.latest_handshake == 1700000000
    never = parse_dump("wg0", f"{zero}\t{NODE.public_key}\t0\toff\n{HUB.public_key}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    assert never.peers[0].endpoint == "" and never.peers[0].allowed_ips == () and never.latest_handshake == 0
    with pytest.raises(VpnError):
        parse_dump("wg0", "garbage")
