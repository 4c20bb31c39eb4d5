"""Handshake: invitation -> request -> accept, persistence between steps, and
every way a relay or a third party can tamper with it."""

from __future__ import annotations

import pytest

import onionpost.client.e2e.handshake as handshake_mod
from onionpost.client.e2e import (
    E2E_MESSAGE_SIZE,
    MAX_ACCEPT_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    ConnectionRequest,
    HandshakeError,
    Invitation,
    InviterSecrets,
    JoinerPending,
    PaddingError,
    StateError,
    accept_request,
    complete_join,
    create_invitation,
    create_request,
    open_request,
    ratchet_decrypt,
    ratchet_encrypt,
)
from onionpost.client.e2e._crypto import mlkem_encapsulate
from onionpost.client.e2e.sizes import INVITATION_SIZE, MLKEM768_CIPHERTEXT_SIZE

from .e2e_helpers import connect, flip, seeded_rng


def test_full_handshake_then_messages_both_ways():
    secrets, invitation = create_invitation()
    qr = invitation.to_bytes()
    assert len(qr) == INVITATION_SIZE == 65

    pending, request = create_request(Invitation.from_bytes(qr), b"reply queue smp://...")
    opened = open_request(secrets, request)
    assert opened.payload == b"reply queue smp://..."
    inviter, accept = accept_request(secrets, opened, b"inviter profile")
    joiner, payload = complete_join(pending, accept)
    assert payload == b"inviter profile"

    assert inviter.local_identity_key == joiner.remote_identity_key == invitation.identity_key
    assert joiner.local_identity_key == inviter.remote_identity_key == opened.joiner_identity_key
    assert inviter.ad == joiner.ad == invitation.identity_key + opened.joiner_identity_key

    for i in range(3):
        joiner, m = ratchet_encrypt(joiner, b"j%d" % i)
        inviter, p = ratchet_decrypt(inviter, m)
        assert p == b"j%d" % i
        inviter, m = ratchet_encrypt(inviter, b"i%d" % i)
        joiner, p = ratchet_decrypt(joiner, m)
        assert p == b"i%d" % i


def test_all_wire_blobs_have_the_same_size():
    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"")
    inviter, accept = accept_request(secrets, open_request(secrets, request), b"x" * 1000)
    joiner, _ = complete_join(pending, accept)
    joiner, message = ratchet_encrypt(joiner, b"hello")
    assert len(request) == len(accept) == len(message) == E2E_MESSAGE_SIZE
    assert request[0] == accept[0] == message[0]  # same version byte: indistinguishable


def test_payload_limits():
    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"r" * MAX_REQUEST_PAYLOAD)
    opened = open_request(secrets, request)
    assert opened.payload == b"r" * MAX_REQUEST_PAYLOAD
    with pytest.raises(PaddingError):
        create_request(invitation, b"r" * (MAX_REQUEST_PAYLOAD + 1))
    with pytest.raises(PaddingError):
        accept_request(secrets, opened, b"a" * (MAX_ACCEPT_PAYLOAD + 1))
    _, accept = accept_request(secrets, opened, b"a" * MAX_ACCEPT_PAYLOAD)
    _, payload = complete_join(pending, accept)
    assert payload == b"a" * MAX_ACCEPT_PAYLOAD


def test_steps_survive_serialization_between_them():
    """The agent persists each step's secrets, possibly across restarts."""
    secrets, invitation = create_invitation()
    secrets = InviterSecrets.from_bytes(secrets.to_bytes())
    assert secrets.invitation == invitation
    pending, request = create_request(invitation, b"q")
    pending = JoinerPending.from_bytes(pending.to_bytes())
    opened = ConnectionRequest.from_bytes(open_request(secrets, request).to_bytes())
    inviter, accept = accept_request(InviterSecrets.from_bytes(secrets.to_bytes()), opened, b"ok")
    joiner, payload = complete_join(JoinerPending.from_bytes(pending.to_bytes()), accept)
    assert payload == b"ok"
    joiner, m = ratchet_encrypt(joiner, b"after restart")
    _, p = ratchet_decrypt(inviter, m)
    assert p == b"after restart"


def test_secret_holders_do_not_print_keys():
    secrets, invitation = create_invitation()
    pending, _ = create_request(invitation, b"")
    assert secrets.identity_private.hex() not in repr(secrets)
    assert "secret" in repr(secrets) and "secret" in repr(pending)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: flip(r, 5),  # ek_b header rewritten
        lambda r: flip(r, 40),  # ciphertext
        lambda r: flip(r, 1000),  # the ML-KEM key inside
        lambda r: flip(r, len(r) - 1),  # tag
        lambda r: r[:-1],
        lambda r: r + b"\x00",
        lambda r: r[:33] + r[34:] + b"\x00",
    ],
    ids=["ek_b", "ct-start", "kem-key", "tag", "truncated", "extended", "shifted"],
)
def test_rewritten_request_fails_with_handshake_error(mutate):
    secrets, invitation = create_invitation()
    _, request = create_request(invitation, b"my reply queue")
    with pytest.raises(HandshakeError, match="failed authentication|malformed|minimum"):
        open_request(secrets, mutate(request))


def test_substituted_request_for_another_invitation_fails():
    """A relay that does not know the invitation cannot produce a request
    the inviter accepts; a request meant for another invitation fails too."""
    secrets, _ = create_invitation()
    _, other_invitation = create_invitation()
    _, request = create_request(other_invitation, b"attacker's reply queue")
    with pytest.raises(HandshakeError, match="failed authentication"):
        open_request(secrets, request)


def test_relay_swapping_the_ephemeral_key_cannot_redirect():
    """Replace ek_b by the relay's own key and keep the body: fails."""
    from onionpost.client.e2e._crypto import x25519_keypair

    secrets, invitation = create_invitation()
    _, request = create_request(invitation, b"q")
    _, relay_public = x25519_keypair(seeded_rng(5))
    forged = request[:1] + relay_public + request[33:]
    with pytest.raises(HandshakeError):
        open_request(secrets, forged)


def test_malformed_request_headers():
    secrets, invitation = create_invitation()
    _, request = create_request(invitation, b"q")
    with pytest.raises(HandshakeError, match="version"):
        open_request(secrets, b"\x02" + request[1:])
    with pytest.raises(HandshakeError, match="low-order"):
        open_request(secrets, request[:1] + bytes(32) + request[33:])
    with pytest.raises(HandshakeError, match="must be bytes"):
        open_request(secrets, "not bytes")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: flip(a, 0),
        lambda a: flip(a, 1),  # KEM ciphertext first byte
        lambda a: flip(a, 600),  # KEM ciphertext middle
        lambda a: flip(a, 1 + MLKEM768_CIPHERTEXT_SIZE + 10),  # ratchet header
        lambda a: flip(a, len(a) - 1),  # ratchet body tag
        lambda a: a[:-1],
        lambda a: a[:1000],
    ],
    ids=["version", "kem-ct-0", "kem-ct-mid", "ratchet-header", "body-tag", "truncated", "short"],
)
def test_tampered_accept_fails_with_handshake_error(mutate):
    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"q")
    _, accept = accept_request(secrets, open_request(secrets, request), b"p")
    with pytest.raises(HandshakeError):
        complete_join(pending, mutate(accept))
    _, payload = complete_join(pending, accept)  # pending is still good
    assert payload == b"p"


def test_accept_for_someone_else_fails():
    """Two joiners used the same invitation; a relay swaps the accepts."""
    secrets, invitation = create_invitation()
    pending_1, request_1 = create_request(invitation, b"1")
    pending_2, request_2 = create_request(invitation, b"2")
    _, accept_1 = accept_request(secrets, open_request(secrets, request_1), b"to 1")
    _, accept_2 = accept_request(secrets, open_request(secrets, request_2), b"to 2")
    with pytest.raises(HandshakeError):
        complete_join(pending_1, accept_2)
    with pytest.raises(HandshakeError):
        complete_join(pending_2, accept_1)


def test_changed_kem_shared_secret_breaks_first_message():
    """The post-quantum part really contributes to the root key."""

    def wrong_secret(public_key):
        ct, ss = mlkem_encapsulate(public_key)
        return ct, flip(ss, 0)

    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"q")
    _, accept = accept_request(secrets, open_request(secrets, request), b"p", kem_encapsulate=wrong_secret)
    with pytest.raises(HandshakeError, match="KEM secret"):
        complete_join(pending, accept)


def test_changed_kem_ciphertext_breaks_first_message():
    def other_ciphertext(public_key):
        _, ss = mlkem_encapsulate(public_key)
        ct2, _ = mlkem_encapsulate(public_key)  # valid ciphertext, different secret
        return ct2, ss

    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"q")
    _, accept = accept_request(secrets, open_request(secrets, request), b"p", kem_encapsulate=other_ciphertext)
    with pytest.raises(HandshakeError):
        complete_join(pending, accept)


@pytest.mark.parametrize("which", [1, 2, 3])
def test_each_dh_contributes_to_the_root_key(monkeypatch, which):
    """Corrupt exactly one of DH1, DH2, DH3 on the inviter's side: the joiner
    cannot decrypt the first message."""
    real_dh = handshake_mod._dh
    calls = []

    def patched(private, public, what):
        out = real_dh(private, public, what)
        calls.append(out)
        return flip(out, 7) if len(calls) == which else out

    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"q")
    opened = open_request(secrets, request)
    monkeypatch.setattr(handshake_mod, "_dh", patched)
    _, accept = accept_request(secrets, opened, b"p")
    monkeypatch.setattr(handshake_mod, "_dh", real_dh)
    assert len(calls) == 3
    with pytest.raises(HandshakeError):
        complete_join(pending, accept)


def test_unchanged_secrets_with_the_hook_do_work():
    """Control for the two tests above: the hook itself is harmless."""
    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"q")
    _, accept = accept_request(secrets, open_request(secrets, request), b"p", kem_encapsulate=mlkem_encapsulate)
    _, payload = complete_join(pending, accept)
    assert payload == b"p"


def test_unusable_kem_key_in_request():
    secrets, invitation = create_invitation()
    _, request = create_request(invitation, b"q")
    opened = open_request(secrets, request)
    bad = ConnectionRequest(opened.joiner_identity_key, opened.joiner_ephemeral_key, b"\xff" * 1184, b"q")
    with pytest.raises(HandshakeError, match="ML-KEM"):
        accept_request(secrets, bad, b"p")


def test_request_with_invalid_kem_key_rejected_when_opened(monkeypatch):
    """A joiner (or anyone who saw the QR) sending an ML-KEM key that fails
    FIPS 203's modulus check is refused at step 3, before any user prompt."""
    import onionpost.client.e2e._crypto as crypto_mod

    secrets, invitation = create_invitation()
    monkeypatch.setattr(crypto_mod, "mlkem_keypair", lambda rng: (bytes(64), b"\xff" * 1184))
    _, request = create_request(invitation, b"q")
    monkeypatch.undo()
    with pytest.raises(HandshakeError, match="ML-KEM key is unusable"):
        open_request(secrets, request)


def test_low_order_keys_rejected():
    secrets, invitation = create_invitation()
    bad_invitation = Invitation(bytes(32), invitation.ephemeral_key)
    with pytest.raises(HandshakeError, match="low-order"):
        create_request(bad_invitation, b"q")
    _, request = create_request(invitation, b"q")
    opened = open_request(secrets, request)
    bad = ConnectionRequest(b"\x01" + bytes(31), opened.joiner_ephemeral_key, opened.kem_public_key, b"q")
    with pytest.raises(HandshakeError, match="low-order"):
        accept_request(secrets, bad, b"p")


def test_invitation_parsing():
    _, invitation = create_invitation()
    data = invitation.to_bytes()
    assert Invitation.from_bytes(data) == invitation
    for bad, msg in [
        (data[:-1], "64 bytes|expected 65"),
        (b"\x09" + data[1:], "version"),
        (b"\x01" + data[1:33] * 2, "identical"),
        (None, "must be bytes"),
    ]:
        with pytest.raises(HandshakeError, match=msg):
            Invitation.from_bytes(bad)


def test_persisted_handshake_records_reject_garbage_and_wrong_types():
    secrets, invitation = create_invitation()
    pending, request = create_request(invitation, b"q")
    opened = open_request(secrets, request)
    for cls, good in [(InviterSecrets, secrets), (JoinerPending, pending), (ConnectionRequest, opened)]:
        with pytest.raises(StateError):
            cls.from_bytes(b"garbage")
        with pytest.raises(StateError, match="expected"):
            cls.from_bytes(pending.to_bytes() if cls is InviterSecrets else secrets.to_bytes())
        with pytest.raises(StateError):
            cls.from_bytes(invitation.to_bytes())
        assert cls.from_bytes(good.to_bytes()) == good


def test_deterministic_handshake_with_seeded_rng_and_fixed_kem():
    """All randomness is injectable except ML-KEM encapsulation (OpenSSL);
    with that pinned, the whole transcript is reproducible."""
    probe_pending, _ = create_request(create_invitation(rng=seeded_rng(1))[1], b"", rng=seeded_rng(2))
    from onionpost.client.e2e._crypto import mlkem_public_from_seed

    pinned = mlkem_encapsulate(mlkem_public_from_seed(probe_pending.kem_seed))

    def run():
        rng_a, rng_b = seeded_rng(1), seeded_rng(2)
        secrets, invitation = create_invitation(rng=rng_a)
        pending, request = create_request(invitation, b"", rng=rng_b)
        inviter, accept = accept_request(
            secrets, open_request(secrets, request), b"hi", rng=rng_a, kem_encapsulate=lambda pk: pinned
        )
        joiner, payload = complete_join(pending, accept, rng=rng_b)
        joiner, m = ratchet_encrypt(joiner, b"x", rng=rng_b)
        return invitation.to_bytes(), request, accept, m, inviter.to_bytes(), joiner.to_bytes(), payload

    first, second = run(), run()
    assert first == second
    assert first[-1] == b"hi"


def test_connect_helper_with_seed_is_deterministic_up_to_kem():
    a1, b1, _ = connect(seed=5)
    a2, b2, _ = connect(seed=5)
    assert a1.local_identity_key == a2.local_identity_key
    assert b1.local_identity_key == b2.local_identity_key
    assert a1.rk != a2.rk  # the KEM secret differs: OpenSSL randomness
