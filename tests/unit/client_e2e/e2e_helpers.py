"""Helpers for the client.e2e tests (imported by the test modules)."""

from __future__ import annotations

import random

from onionpost.client.e2e import (
    accept_request,
    complete_join,
    create_invitation,
    create_request,
    open_request,
)


def seeded_rng(seed: int):
    """A deterministic ``rng(n) -> bytes``."""
    return random.Random(seed).randbytes


def connect(
    *,
    seed: int | None = None,
    request_payload: bytes = b"joiner reply queue",
    accept_payload: bytes = b"hello from inviter",
    kem_encapsulate=None,
):
    """Run the whole handshake; return (inviter_state, joiner_state, first_payload)."""
    kw_a = {"rng": seeded_rng(seed)} if seed is not None else {}
    kw_b = {"rng": seeded_rng(seed + 1)} if seed is not None else {}
    secrets, invitation = create_invitation(**kw_a)
    pending, request = create_request(invitation, request_payload, **kw_b)
    opened = open_request(secrets, request)
    assert opened.payload == request_payload
    inviter, accept = accept_request(secrets, opened, accept_payload, kem_encapsulate=kem_encapsulate, **kw_a)
    joiner, payload = complete_join(pending, accept, **kw_b)
    return inviter, joiner, payload


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    """Return ``data`` with one byte XORed with ``mask``."""
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)
