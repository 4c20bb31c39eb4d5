import base64
import hashlib

import pytest

from onionpost.proto import AddressError, NodeAddress, parse_node_address
from onionpost.proto.address import b64url, is_valid_onion_v3

KEY = bytes(range(32))


def onion_for(pubkey: bytes) -> str:
    checksum = hashlib.sha3_256(b".onion checksum" + pubkey + b"\x03").digest()[:2]
    return base64.b32encode(pubkey + checksum + b"\x03").decode().lower() + ".onion"


def test_loopback_round_trip():
    text = f"onionpost://{b64url(KEY)}@127.0.0.1:5223"
    address = parse_node_address(text)
    assert address == NodeAddress(KEY, "127.0.0.1", 5223)
    assert str(address) == text
    assert address.is_loopback and not address.is_onion


def test_ipv6_loopback_round_trip():
    address = parse_node_address(f"onionpost://{b64url(KEY)}@[::1]:80")
    assert address.host == "::1"
    assert str(address).endswith("@[::1]:80")


def test_onion_round_trip():
    onion = onion_for(bytes(32 * [7]))
    address = parse_node_address(f"  onionpost://{b64url(KEY)}@{onion.upper()}:80\n")
    assert address.host == onion and address.is_onion
    assert parse_node_address(str(address)) == address


@pytest.mark.parametrize(
    "text, message",
    [
        ("http://x@127.0.0.1:1", "must start with 'onionpost://'"),
        (f"onionpost://{b64url(KEY)}127.0.0.1:1", "no '@'"),
        ("onionpost://abc@127.0.0.1:1", "must be 32 bytes"),
        ("onionpost://a+b@127.0.0.1:1", "base64url"),
        (f"onionpost://{b64url(KEY)}@127.0.0.1", "no ':port'"),
        (f"onionpost://{b64url(KEY)}@127.0.0.1:0", "port must be"),
        (f"onionpost://{b64url(KEY)}@127.0.0.1:99999", "port must be"),
        (f"onionpost://{b64url(KEY)}@example.com:80", "only .onion names and loopback"),
        (f"onionpost://{b64url(KEY)}@localhost:80", "only .onion names and loopback"),
        (f"onionpost://{b64url(KEY)}@10.0.0.1:80", "not loopback"),
        (f"onionpost://{b64url(KEY)}@[2001:db8::1]:80", "not loopback"),
        (f"onionpost://{b64url(KEY)}@{'a' * 56}.onion:80", "not a valid v3 .onion"),
        ("onionpost://" + "A" * 300, "longer than"),
    ],
)
def test_bad_addresses_are_refused_with_a_reason(text, message):
    with pytest.raises(AddressError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_node_address(text)


def test_onion_checksum_is_checked():
    good = onion_for(bytes(32))[: -len(".onion")]
    assert is_valid_onion_v3(good)
    flipped = ("b" if good[0] != "b" else "c") + good[1:]
    assert not is_valid_onion_v3(flipped)
