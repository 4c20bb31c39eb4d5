"""Property tests: hostile bytes only ever raise our own errors, and random
delivery schedules (loss, reordering, duplication) never confuse the ratchet."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onionpost.client.e2e import (
    ConnectionRequest,
    DecryptError,
    E2EError,
    Invitation,
    InviterSecrets,
    JoinerPending,
    RatchetState,
    ReceiverChain,
    ReplayError,
    SenderChain,
    StateError,
    complete_join,
    create_invitation,
    create_request,
    open_request,
    accept_request,
    ratchet_decrypt,
    ratchet_encrypt,
    unpad,
)

from .e2e_helpers import connect, seeded_rng

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One conversation and one handshake shared by the examples (states are
# immutable, so sharing is safe).
_INVITER, _JOINER, _ = connect(seed=100)
_INVITER_2, _MSG = ratchet_encrypt(_INVITER, b"genuine message", rng=seeded_rng(1))
_SECRETS, _INVITATION = create_invitation(rng=seeded_rng(2))
_PENDING, _REQUEST = create_request(_INVITATION, b"queue", rng=seeded_rng(3))
_, _ACCEPT = accept_request(_SECRETS, open_request(_SECRETS, _REQUEST), b"hi", rng=seeded_rng(4))


def mutations(original: bytes):
    """Bit flips, byte overwrites, truncation, extension and splices."""
    n = len(original)
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4).map(
        lambda changes: _apply(original, changes)
    )
    truncations = st.integers(0, n - 1).map(lambda k: original[:k])
    extensions = st.binary(min_size=1, max_size=64).map(lambda extra: original + extra)
    splices = st.tuples(st.integers(0, n), st.binary(max_size=64)).map(lambda t: original[: t[0]] + t[1] + original[t[0] :])
    return st.one_of(flips, truncations, extensions, splices)


def _apply(data: bytes, changes) -> bytes:
    b = bytearray(data)
    for index, mask in changes:
        b[index] ^= mask
    return bytes(b)


@FUZZ
@given(st.binary(max_size=20_000))
def test_random_bytes_to_ratchet_decrypt(data):
    with pytest.raises(E2EError):
        ratchet_decrypt(_JOINER, data)


@FUZZ
@given(mutations(_MSG))
def test_mutated_message_only_raises_our_errors(data):
    try:
        state, plaintext = ratchet_decrypt(_JOINER, data)
    except E2EError:
        return
    # Extremely unlikely to get here unless the mutation was a no-op.
    assert data == _MSG and plaintext == b"genuine message"


@FUZZ
@given(st.one_of(st.binary(max_size=16_000), mutations(_REQUEST)))
def test_hostile_requests(data):
    try:
        opened = open_request(_SECRETS, data)
    except E2EError:
        return
    assert data == _REQUEST and opened.payload == b"queue"


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=16_000), mutations(_ACCEPT)))
def test_hostile_accepts(data):
    try:
        _, payload = complete_join(_PENDING, data)
    except E2EError:
        return
    assert data == _ACCEPT and payload == b"hi"


@FUZZ
@given(st.binary(max_size=200))
def test_hostile_invitations(data):
    try:
        Invitation.from_bytes(data)
    except E2EError:
        return
    assert len(data) == 65


@FUZZ
@given(st.binary(max_size=2000))
def test_unpad_random(data):
    try:
        unpad(data)
    except E2EError:
        pass


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_to_chain_receiver(data):
    try:
        ReceiverChain().receive(data)
    except E2EError:
        pass


_RECORDS = [
    (RatchetState, _INVITER_2.to_bytes()),
    (InviterSecrets, _SECRETS.to_bytes()),
    (JoinerPending, _PENDING.to_bytes()),
    (ConnectionRequest, open_request(_SECRETS, _REQUEST).to_bytes()),
    (SenderChain, SenderChain(3, b"\x01" * 32).to_bytes()),
    (ReceiverChain, ReceiverChain(3, b"\x01" * 32, ((2, None),)).to_bytes()),
]


@FUZZ
@given(st.sampled_from(range(len(_RECORDS))), st.data())
def test_mutated_or_random_state_bytes(index, data):
    cls, good = _RECORDS[index]
    blob = data.draw(st.one_of(st.binary(max_size=600), mutations(good)))
    try:
        value = cls.from_bytes(blob)
    except StateError:
        return
    assert isinstance(value, cls)  # a mutation that still parses is a valid value


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["t", "v", "ad", "rk", "dhs", "skipped", "ns", "x"]), _msgpack_values))
def test_well_formed_msgpack_with_wrong_fields(fields):
    with pytest.raises(StateError):
        RatchetState.from_bytes(msgpack.packb(fields, use_bin_type=True))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_delivery_schedule(data):
    """Both sides send; the network loses, reorders and duplicates messages.
    Every message that arrives decrypts exactly once to what was sent;
    duplicates are replays; nothing else ever goes wrong."""
    a, b, _ = connect(seed=data.draw(st.integers(0, 10_000)))
    states = {"a": a, "b": b}
    in_flight = {"a": [], "b": []}  # messages addressed to each side
    delivered = set()
    counter = 0
    for _ in range(data.draw(st.integers(5, 40))):
        action = data.draw(st.sampled_from(["send_a", "send_b", "deliver", "deliver", "duplicate"]))
        if action.startswith("send"):
            sender = action[-1]
            receiver = "b" if sender == "a" else "a"
            counter += 1
            text = b"%s-%d" % (sender.encode(), counter)
            states[sender], m = ratchet_encrypt(states[sender], text, padded_size=64)
            in_flight[receiver].append((text, m))
            continue
        receiver = data.draw(st.sampled_from(["a", "b"]))
        if not in_flight[receiver]:
            continue
        i = data.draw(st.integers(0, len(in_flight[receiver]) - 1))
        text, m = in_flight[receiver][i]
        if action == "duplicate" and text in delivered:
            # ReplayError while the message's header key is still known (its chain or the
            # previous one); from a chain two or more DH steps back the header no longer opens
            # at all, so the duplicate is refused as undecryptable. It never decrypts twice.
            with pytest.raises((ReplayError, DecryptError)):
                ratchet_decrypt(states[receiver], m)
            continue
        if text in delivered:
            continue
        states[receiver], plain = ratchet_decrypt(states[receiver], m)
        assert plain == text
        delivered.add(text)
    # whatever happened, the connection still works both ways
    states["a"], m = ratchet_encrypt(states["a"], b"final a")
    states["b"], p = ratchet_decrypt(states["b"], m)
    assert p == b"final a"
    states["b"], m = ratchet_encrypt(states["b"], b"final b")
    states["a"], p = ratchet_decrypt(states["a"], m)
    assert p == b"final b"
