"""Double Ratchet behaviour: both directions, ordering, limits, replays,
tampering, persistence, forward secrecy and break-in recovery."""

from __future__ import annotations

import random

import pytest

from onionpost.client.e2e import (
    E2E_MESSAGE_SIZE,
    MAX_SKIP,
    MAX_SKIPPED_TOTAL,
    DecryptError,
    E2EError,
    PaddingError,
    RatchetState,
    ReplayError,
    SkipLimitError,
    StateError,
    ratchet_decrypt,
    ratchet_encrypt,
)
from onionpost.client.e2e.ratchet import init_receiver, init_sender
from onionpost.client.e2e.sizes import ENCRYPTED_HEADER_SIZE

from .e2e_helpers import connect, flip, seeded_rng

SMALL = 64  # padded size for tests that send thousands of messages


def send(state, text: bytes, **kw):
    return ratchet_encrypt(state, text, **kw)


def test_messages_both_ways_after_handshake(pair):
    inviter, joiner = pair
    joiner, m1 = send(joiner, b"hi inviter")
    inviter, p1 = ratchet_decrypt(inviter, m1)
    assert p1 == b"hi inviter"
    inviter, m2 = send(inviter, b"hi joiner")
    joiner, p2 = ratchet_decrypt(joiner, m2)
    assert p2 == b"hi joiner"
    assert len(m1) == len(m2) == E2E_MESSAGE_SIZE


def test_many_ratchet_steps_in_both_directions(pair):
    a, b = pair
    rnd = random.Random(7)
    last_dh_a, dh_keys_seen = a.dhs_public, {a.dhs_public, b.dhs_public}
    for round_no in range(60):
        for _ in range(rnd.randint(1, 4)):
            text = f"a->b {round_no}".encode()
            a, m = send(a, text, padded_size=SMALL)
            b, p = ratchet_decrypt(b, m)
            assert p == text
        for _ in range(rnd.randint(1, 4)):
            text = f"b->a {round_no}".encode()
            b, m = send(b, text, padded_size=SMALL)
            a, p = ratchet_decrypt(a, m)
            assert p == text
        # every round trip is a DH ratchet step on both sides: fresh keys
        assert a.dhs_public != last_dh_a
        last_dh_a = a.dhs_public
        dh_keys_seen.update({a.dhs_public, b.dhs_public})
    assert len(dh_keys_seen) >= 120
    assert a.skipped == () and b.skipped == ()


def test_out_of_order_within_a_chain(pair):
    a, b = pair
    msgs = []
    for i in range(6):
        a, m = send(a, b"m%d" % i)
        msgs.append((i, m))
    order = [3, 0, 5, 1, 4, 2]
    for i in order:
        b, p = ratchet_decrypt(b, msgs[i][1])
        assert p == b"m%d" % i
    assert b.skipped == ()


def test_out_of_order_across_chains(pair):
    a, b = pair
    a, old1 = send(a, b"old 1")
    a, old2 = send(a, b"old 2")
    a, old3 = send(a, b"old 3")
    b, p = ratchet_decrypt(b, old3)  # skips old1, old2
    assert p == b"old 3" and len(b.skipped) == 2
    b, reply = send(b, b"reply")
    a, _ = ratchet_decrypt(a, reply)
    a, new1 = send(a, b"new 1")  # new DH ratchet chain
    a, new2 = send(a, b"new 2")
    b, p = ratchet_decrypt(b, new2)
    assert p == b"new 2"
    b, p = ratchet_decrypt(b, old1)
    assert p == b"old 1"
    b, p = ratchet_decrypt(b, new1)
    assert p == b"new 1"
    b, p = ratchet_decrypt(b, old2)
    assert p == b"old 2"
    assert b.skipped == ()


def test_messages_of_previous_chain_arriving_after_ratchet_step(pair):
    """Messages sent before a reply, delivered after the peer's next chain:
    the header's PN makes the receiver store the rest of the old chain."""
    a, b = pair
    b, r = send(b, b"b1")
    a, _ = ratchet_decrypt(a, r)
    a, x1 = send(a, b"x1")
    a, x2 = send(a, b"x2")
    b, r2 = send(b, b"b2")  # b has not seen x1/x2 yet
    a, _ = ratchet_decrypt(a, r2)
    a, y1 = send(a, b"y1")  # new chain; header says PN=2
    b, p = ratchet_decrypt(b, y1)
    assert p == b"y1"
    assert len(b.skipped) == 2
    b, p = ratchet_decrypt(b, x2)
    assert p == b"x2"
    b, p = ratchet_decrypt(b, x1)
    assert p == b"x1"


def test_skipping_exactly_max_skip_works(pair):
    a, b = pair
    msgs = []
    for i in range(MAX_SKIP + 1):
        a, m = send(a, b"%d" % i, padded_size=SMALL)
        msgs.append(m)
    b, p = ratchet_decrypt(b, msgs[MAX_SKIP])
    assert p == b"%d" % MAX_SKIP
    assert len(b.skipped) == MAX_SKIP
    b, p = ratchet_decrypt(b, msgs[0])
    assert p == b"0"


def test_max_skip_exceeded_is_a_clear_error_and_state_is_kept(pair):
    a, b = pair
    msgs = []
    for i in range(MAX_SKIP + 2):
        a, m = send(a, b"%d" % i, padded_size=SMALL)
        msgs.append(m)
    before = b.to_bytes()
    with pytest.raises(SkipLimitError, match=f"limit is {MAX_SKIP}"):
        ratchet_decrypt(b, msgs[-1])
    assert isinstance(SkipLimitError("x"), DecryptError)
    assert b.to_bytes() == before
    b, p = ratchet_decrypt(b, msgs[0])  # the state still works
    assert p == b"0"


def test_max_skip_applies_to_previous_chain_counter(pair):
    a, b = pair
    for i in range(MAX_SKIP + 2):
        a, _ = send(a, b"lost", padded_size=SMALL)
    b2, r = send(b, b"reply")  # b received nothing of the lost messages
    a, _ = ratchet_decrypt(a, r)
    a, m = send(a, b"new chain, PN = MAX_SKIP + 3")
    with pytest.raises(SkipLimitError):
        ratchet_decrypt(b2, m)


def test_total_skipped_keys_are_capped_and_oldest_evicted(pair):
    a, b = pair
    first_of_chain = []
    for _ in range(3):
        msgs = []
        for i in range(MAX_SKIP + 1):
            a, m = send(a, b"%d" % i, padded_size=SMALL)
            msgs.append(m)
        first_of_chain.append(msgs[0])
        b, _ = ratchet_decrypt(b, msgs[-1])
        b, r = send(b, b"reply", padded_size=SMALL)
        a, _ = ratchet_decrypt(a, r)
        assert len(b.skipped) <= MAX_SKIPPED_TOTAL
    assert len(b.skipped) == MAX_SKIPPED_TOTAL
    with pytest.raises(DecryptError):  # its key was evicted
        ratchet_decrypt(b, first_of_chain[0])
    b, p = ratchet_decrypt(b, first_of_chain[2])  # recent keys are kept
    assert p == b"0"
    b, p = ratchet_decrypt(b, first_of_chain[1])
    assert p == b"0"


def test_replay_in_current_chain_is_rejected(pair):
    a, b = pair
    a, m = send(a, b"once")
    b, _ = ratchet_decrypt(b, m)
    with pytest.raises(ReplayError, match="already decrypted"):
        ratchet_decrypt(b, m)


def test_replay_of_skipped_message_is_rejected(pair):
    a, b = pair
    a, m1 = send(a, b"1")
    a, m2 = send(a, b"2")
    b, _ = ratchet_decrypt(b, m2)
    b, _ = ratchet_decrypt(b, m1)
    with pytest.raises(ReplayError):
        ratchet_decrypt(b, m1)


def test_replay_of_previous_chain_message_is_rejected(pair):
    a, b = pair
    a, m = send(a, b"old chain")
    b, _ = ratchet_decrypt(b, m)
    b, r = send(b, b"r")
    a, _ = ratchet_decrypt(a, r)
    a, m2 = send(a, b"new chain")
    b, _ = ratchet_decrypt(b, m2)
    with pytest.raises(ReplayError, match="previous chain"):
        ratchet_decrypt(b, m)


def test_replay_of_first_message_of_handshake_is_rejected():
    """The accept message's ratchet part, replayed as a normal message."""
    from onionpost.client.e2e import accept_request, complete_join, create_invitation, create_request, open_request

    secrets, inv = create_invitation()
    pending, req = create_request(inv, b"q")
    inviter, accept = accept_request(secrets, open_request(secrets, req), b"first")
    joiner, _ = complete_join(pending, accept)
    first_ratchet_message = accept[1 + 1088 :]
    with pytest.raises(ReplayError):
        ratchet_decrypt(joiner, first_ratchet_message)


@pytest.mark.parametrize(
    "index",
    [0, 1, 12, 24, 40, 24 + 40 + 15, 1 + ENCRYPTED_HEADER_SIZE, 500, E2E_MESSAGE_SIZE - 1],
    ids=["version", "hdr-nonce", "hdr-nonce-mid", "hdr-ct", "hdr-ct-mid", "hdr-tag", "body-start", "body", "body-tag"],
)
def test_tampered_message_rejected_without_state_change(pair, index):
    a, b = pair
    a, m = send(a, b"genuine")
    snapshot = b.to_bytes()
    with pytest.raises(DecryptError):
        ratchet_decrypt(b, flip(m, index))
    assert b.to_bytes() == snapshot  # nothing changed
    b, p = ratchet_decrypt(b, m)  # and the genuine message still decrypts
    assert p == b"genuine"


def test_tampered_body_on_new_dh_ratchet_leaves_state_usable(pair):
    """The header decrypts under the *next* header key (a DH ratchet step
    would happen) but the body is forged: no step may be taken."""
    a, b = pair
    b, r = send(b, b"r")
    a, _ = ratchet_decrypt(a, r)
    a, m = send(a, b"new chain")
    snapshot = b.to_bytes()
    with pytest.raises(DecryptError, match="body failed authentication"):
        ratchet_decrypt(b, flip(m, len(m) - 20))
    assert b.to_bytes() == snapshot
    b, p = ratchet_decrypt(b, m)
    assert p == b"new chain"


def test_truncated_and_extended_messages_rejected(pair):
    a, b = pair
    a, m = send(a, b"x")
    for bad in (b"", m[:1], m[:96], m[:-1], m + b"\x00"):
        with pytest.raises(DecryptError):
            ratchet_decrypt(b, bad)
    b, p = ratchet_decrypt(b, m)
    assert p == b"x"


def test_message_for_another_conversation_rejected(pair):
    a, b = pair
    _, other_b, _ = connect()
    a, m = send(a, b"not for you")
    with pytest.raises(DecryptError, match="cannot decrypt the message header"):
        ratchet_decrypt(other_b, m)


def test_wrong_associated_data_rejected(pair):
    """The AD (ik_a || ik_b) is bound to every body: a state with the same
    keys but different identities cannot decrypt."""
    import dataclasses

    a, b = pair
    a, m = send(a, b"bound")
    forged = dataclasses.replace(b, ad=bytes(64))
    with pytest.raises(DecryptError, match="body failed"):
        ratchet_decrypt(forged, m)


def test_authentic_message_with_bad_padding_raises_padding_error(pair):
    a, b = pair
    import onionpost.client.e2e.ratchet as ratchet_mod

    real_pad = ratchet_mod.pad
    try:
        ratchet_mod.pad = lambda data, size: b"\xff\xff" + bytes(size - 2)  # length points past the end
        a, m = send(a, b"whatever")
    finally:
        ratchet_mod.pad = real_pad
    snapshot = b.to_bytes()
    with pytest.raises(PaddingError):
        ratchet_decrypt(b, m)
    assert b.to_bytes() == snapshot


def test_joiner_cannot_send_before_first_message():
    state = init_receiver(bytes(32), b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, bytes(64))
    assert not state.can_send
    with pytest.raises(StateError, match="cannot send yet"):
        ratchet_encrypt(state, b"too early")


def test_init_directly_sender_and_receiver_interoperate():
    rng = seeded_rng(3)
    bob_private = rng(32)
    from onionpost.client.e2e._crypto import x25519_public

    alice = init_sender(b"k" * 32, b"h" * 32, b"n" * 32, x25519_public(bob_private), b"a" * 64, rng=rng)
    bob = init_receiver(b"k" * 32, b"h" * 32, b"n" * 32, bob_private, b"a" * 64)
    alice, m = ratchet_encrypt(alice, b"hello", rng=rng)
    bob, p = ratchet_decrypt(bob, m, rng=rng)
    assert p == b"hello"
    bob, m = ratchet_encrypt(bob, b"back", rng=rng)
    alice, p = ratchet_decrypt(alice, m, rng=rng)
    assert p == b"back"


def test_state_round_trip_mid_conversation(pair):
    a, b = pair
    a, m1 = send(a, b"1")
    a, m2 = send(a, b"2")
    a, m3 = send(a, b"3")
    b, _ = ratchet_decrypt(b, m3)  # two skipped keys in the state
    b, r = send(b, b"r")
    restored_b = RatchetState.from_bytes(b.to_bytes())
    restored_a = RatchetState.from_bytes(a.to_bytes())
    assert restored_b == b and restored_a == a
    assert len(restored_b.skipped) == 2
    restored_a, p = ratchet_decrypt(restored_a, r)
    assert p == b"r"
    restored_b, p = ratchet_decrypt(restored_b, m1)
    assert p == b"1"
    restored_a, m4 = send(restored_a, b"4")
    restored_b, p = ratchet_decrypt(restored_b, m4)
    assert p == b"4"
    restored_b, p = ratchet_decrypt(restored_b, m2)
    assert p == b"2"


def test_state_bytes_size_is_reasonable(pair):
    a, b = pair
    assert len(a.to_bytes()) < 600
    assert len(b.to_bytes()) < 600


def test_repr_hides_secrets(pair):
    a, _ = pair
    text = repr(a)
    assert a.rk.hex() not in text and str(a.rk) not in text
    assert "ns=" in text


def test_old_message_keys_not_derivable_from_new_state(pair):
    """Forward secrecy: after decrypting, the state holds neither the message
    key nor the chain key it came from."""
    a, b = pair
    a, m = send(a, b"secret")
    before = b
    b, p = ratchet_decrypt(b, m)
    assert p == b"secret"
    with pytest.raises(ReplayError):
        ratchet_decrypt(b, m)
    serialized = b.to_bytes()
    assert before.ckr not in serialized  # chain key that produced the message key is gone
    assert b.ckr != before.ckr
    assert b.skipped == ()


def test_break_in_recovery():
    """An attacker copies both states at time T (say, a stolen backup) and
    passively runs every later message through the copies.  The copies keep
    working only while messages still depend on ratchet keys that existed at
    T; once each side has made a fresh DH ratchet step, neither copy can
    decrypt anything."""
    a, b, _ = connect()
    stolen_a = RatchetState.from_bytes(a.to_bytes())  # time T
    stolen_b = RatchetState.from_bytes(b.to_bytes())

    # Chains derived from keys that existed at T are readable by the thief.
    a, m1 = send(a, b"m1")
    b, _ = ratchet_decrypt(b, m1)
    stolen_b, p = ratchet_decrypt(stolen_b, m1)
    assert p == b"m1"
    b, r1 = send(b, b"r1")  # b's ratchet key was generated before T
    a, _ = ratchet_decrypt(a, r1)
    stolen_a, p = ratchet_decrypt(stolen_a, r1)
    assert p == b"r1"
    a, m2 = send(a, b"m2")  # a's new key A2 (after T) with b's old key B1
    b, _ = ratchet_decrypt(b, m2)
    stolen_b, p = ratchet_decrypt(stolen_b, m2)
    assert p == b"m2"  # B1's private key is in the copy: not healed yet

    # b answers with a key generated after T: DH(B2, A2), both unknown.
    b, r2 = send(b, b"r2")
    a, p = ratchet_decrypt(a, r2)
    assert p == b"r2"
    with pytest.raises(DecryptError):
        ratchet_decrypt(stolen_a, r2)
    # a answers with A3: DH(A3, B2), also unknown.
    a, m3 = send(a, b"m3")
    b, p = ratchet_decrypt(b, m3)
    assert p == b"m3"
    with pytest.raises(DecryptError):
        ratchet_decrypt(stolen_b, m3)
    a, m4 = send(a, b"m4")
    with pytest.raises(DecryptError):
        ratchet_decrypt(stolen_b, m4)


def test_deterministic_with_seeded_rng():
    def run():
        rng_a, rng_b = seeded_rng(11), seeded_rng(12)
        alice_private = rng_b(32)
        from onionpost.client.e2e._crypto import x25519_public

        a = init_sender(b"s" * 32, b"h" * 32, b"n" * 32, x25519_public(alice_private), b"d" * 64, rng=rng_a)
        b = init_receiver(b"s" * 32, b"h" * 32, b"n" * 32, alice_private, b"d" * 64)
        out = []
        for i in range(5):
            a, m = ratchet_encrypt(a, b"a%d" % i, rng=rng_a)
            b, _ = ratchet_decrypt(b, m, rng=rng_b)
            b, m2 = ratchet_encrypt(b, b"b%d" % i, rng=rng_b)
            a, _ = ratchet_decrypt(a, m2, rng=rng_a)
            out += [m, m2]
        return out, a.to_bytes(), b.to_bytes()

    assert run() == run()


def test_rng_must_return_requested_length(pair):
    a, _ = pair
    with pytest.raises(ValueError, match="exactly 24 bytes"):
        ratchet_encrypt(a, b"x", rng=lambda n: b"short")


def test_all_errors_are_e2e_errors():
    for cls in (DecryptError, ReplayError, SkipLimitError, PaddingError, StateError):
        assert issubclass(cls, E2EError)
    assert issubclass(ReplayError, DecryptError)
