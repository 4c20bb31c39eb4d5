"""Padding format and the size budget against the relay's message limit."""

from __future__ import annotations

import pytest

from onionpost.client.e2e import (
    E2E_MESSAGE_SIZE,
    MAX_ACCEPT_PAYLOAD,
    MAX_MESSAGE_PLAINTEXT,
    MAX_REQUEST_PAYLOAD,
    MESSAGE_PADDED_SIZE,
    RATCHET_OVERHEAD,
    RELAY_MAX_BODY,
    PaddingError,
    pad,
    unpad,
)
from onionpost.client.e2e import sizes


def test_size_budget_fits_the_relay_limit():
    # ratchet message: version + encrypted header (nonce + 40 + tag) + body tag
    assert RATCHET_OVERHEAD == 1 + (24 + 40 + 16) + 16 == 97
    message = RATCHET_OVERHEAD + MESSAGE_PADDED_SIZE
    accept = 1 + sizes.MLKEM768_CIPHERTEXT_SIZE + RATCHET_OVERHEAD + sizes.ACCEPT_PADDED_SIZE
    request = 1 + 32 + 16 + 32 + sizes.MLKEM768_PUBLIC_KEY_SIZE + sizes.REQUEST_PADDED_SIZE
    assert message == accept == request == E2E_MESSAGE_SIZE
    assert E2E_MESSAGE_SIZE <= RELAY_MAX_BODY
    # the accept message (the largest by overhead: it carries the KEM ciphertext) fits
    assert sizes.ACCEPT_PREFIX_SIZE + RATCHET_OVERHEAD + sizes.ACCEPT_PADDED_SIZE <= RELAY_MAX_BODY
    assert MAX_MESSAGE_PLAINTEXT == MESSAGE_PADDED_SIZE - 2 == 15_133
    assert MAX_ACCEPT_PAYLOAD == 14_044
    assert MAX_REQUEST_PAYLOAD == 13_965
    assert sizes.INVITATION_SIZE == 65


@pytest.mark.parametrize("n", [0, 1, 2, 100, MAX_MESSAGE_PLAINTEXT - 1, MAX_MESSAGE_PLAINTEXT])
def test_round_trip_at_boundaries(n):
    data = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    block = pad(data)
    assert len(block) == MESSAGE_PADDED_SIZE
    assert unpad(block) == data


def test_every_plaintext_pads_to_the_same_size():
    assert {len(pad(b"x" * n)) for n in (0, 7, 5000, MAX_MESSAGE_PLAINTEXT)} == {MESSAGE_PADDED_SIZE}


def test_too_long_is_a_clear_error():
    with pytest.raises(PaddingError, match=f"at most {MAX_MESSAGE_PLAINTEXT} bytes"):
        pad(b"x" * (MAX_MESSAGE_PLAINTEXT + 1))


def test_custom_sizes():
    assert unpad(pad(b"abc", 5)) == b"abc"
    with pytest.raises(PaddingError):
        pad(b"abcd", 5)
    with pytest.raises(PaddingError, match="padded size"):
        pad(b"", 1)
    with pytest.raises(PaddingError, match="padded size"):
        pad(b"", 70_000)


@pytest.mark.parametrize(
    "block, message",
    [
        (b"", "shorter than its 2-byte length"),
        (b"\x00", "shorter than its 2-byte length"),
        (b"\x00\x05abc", "says 5 bytes"),
        (b"\xff\xff" + bytes(100), "says 65535 bytes"),
        (b"\x00\x01a\x00\x01", "not all zero"),
        (b"\x00\x00\x80", "not all zero"),
    ],
)
def test_malformed_padding_rejected(block, message):
    with pytest.raises(PaddingError, match=message):
        unpad(block)


def test_padding_is_canonical():
    block = pad(b"hello", 32)
    assert block == b"\x00\x05hello" + bytes(25)
    with pytest.raises(PaddingError):
        unpad(block[:-1] + b"\x01")
