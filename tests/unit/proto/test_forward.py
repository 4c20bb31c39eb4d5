import pytest

from onionpost.proto import ErrorCode, Ok, RemoteProtocolError, Send, crypto, forward
from onionpost.proto.delivery import open_message, seal_message
from onionpost.proto.frames import Error
from onionpost.proto.testing import DeterministicRng

NOW = 1_800_000_000


@pytest.fixture
def node():
    return crypto.signing_keypair(DeterministicRng(b"dest"))


def test_envelope_round_trip(node):
    public, secret = node
    spub, ssec = crypto.signing_keypair()
    env, response_key = forward.seal_send(public, b"q" * 24, Send(b"hi"), ssec, NOW)
    opened = forward.open_envelope(secret, env, NOW + 5)
    t = opened.transmission
    assert t.command == Send(b"hi") and t.queue == b"q" * 24 and t.session == opened.ephemeral_key
    assert crypto.verify(spub, crypto.COMMAND_DOMAIN, t.body, t.signature)
    assert opened.response_key == response_key
    assert forward.open_response(response_key, forward.seal_response(response_key, Ok())) == Ok()
    sealed_error = forward.seal_response(response_key, Error("QUOTA", "full"))
    assert forward.open_response(response_key, sealed_error) == Error("QUOTA", "full")


def test_envelopes_have_the_same_size_whatever_the_body(node):
    small, _ = forward.seal_send(node[0], b"q" * 24, Send(b""), None, NOW)
    big, _ = forward.seal_send(node[0], b"q" * 24, Send(b"x" * 15360), None, NOW)
    assert len(small) == len(big)


def test_only_the_destination_can_open(node):
    env, _ = forward.seal_send(node[0], b"q" * 24, Send(b"hi"), None, NOW)
    _, other_secret = crypto.signing_keypair()
    with pytest.raises(RemoteProtocolError) as exc:
        forward.open_envelope(other_secret, env, NOW)
    assert exc.value.code is ErrorCode.ENVELOPE


def test_tampered_envelope_is_refused(node):
    env, _ = forward.seal_send(node[0], b"q" * 24, Send(b"hi"), None, NOW)
    tampered = env[:-10] + bytes([env[-10] ^ 0x40]) + env[-9:]
    with pytest.raises(RemoteProtocolError) as exc:
        forward.open_envelope(node[1], tampered, NOW)
    assert exc.value.code is ErrorCode.ENVELOPE


def test_stale_envelope_is_refused(node):
    env, _ = forward.seal_send(node[0], b"q" * 24, Send(b"hi"), None, NOW)
    with pytest.raises(RemoteProtocolError, match="stale"):
        forward.open_envelope(node[1], env, NOW + forward.MAX_ENVELOPE_AGE + 1)


def test_forwarded_response_needs_the_right_key(node):
    _, key = forward.seal_send(node[0], b"q" * 24, Send(b"hi"), None, NOW)
    _, other = forward.seal_send(node[0], b"q" * 24, Send(b"hi"), None, NOW)
    with pytest.raises(RemoteProtocolError):
        forward.open_response(other, forward.seal_response(key, Ok()))


def test_delivery_box_hides_the_sent_bytes():
    rpub, rsec = crypto.dh_keypair()
    npub, nsec = crypto.dh_keypair()
    node_side = crypto.queue_secret(nsec, rpub)
    recipient_side = crypto.queue_secret(rsec, npub)
    assert node_side == recipient_side
    body = b"end-to-end ciphertext" * 20
    box = seal_message(node_side, NOW, body)
    assert body not in box
    assert open_message(recipient_side, box) == (NOW, body)
    with pytest.raises(RemoteProtocolError):
        open_message(crypto.queue_secret(rsec, crypto.dh_keypair()[0]), box)


def test_low_order_key_is_refused():
    with pytest.raises(RemoteProtocolError) as exc:
        crypto.dh(crypto.dh_keypair()[1], bytes(32))
    assert exc.value.code is ErrorCode.HANDSHAKE


def test_low_order_envelope_key_is_an_envelope_error(node):
    from onionpost.proto.frames import packb

    envelope = packb({"epk": bytes(32), "box": bytes(100)})
    with pytest.raises(RemoteProtocolError) as exc:
        forward.open_envelope(node[1], envelope, NOW)
    assert exc.value.code is ErrorCode.ENVELOPE and not exc.value.code.fatal
