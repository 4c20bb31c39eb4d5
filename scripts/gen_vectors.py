#!/usr/bin/env python3
"""Generate tests/vectors/relay-v1.json: worked examples of relay protocol 1.2.

Every random input (seeds, X25519 secrets, session id, corr ids, nonces) is
written into the file under ``inputs``, and the reference code is made to use
exactly those (``Script``), so every other value in the file can be recomputed
from the file alone, with libsodium and msgpack
(``tests/unit/proto/test_vectors_independent.py`` does, without onionpost).
The inputs come from fixed seeds, so the output changes only if the protocol
does. `python scripts/gen_vectors.py --check` compares instead of writing.
See docs/protocol/relay.md, "Test vectors".
"""

import hashlib
import json
import sys
from pathlib import Path

from onionpost.proto import Ack, Message, New, Ok, Ping, Pong, QueueIds, Send, Subscribe, crypto, forward
from onionpost.proto.block import unpad
from onionpost.proto.delivery import seal_message
from onionpost.proto.frames import packb, unpackb
from onionpost.proto.session import NEED_DATA
from onionpost.proto.session import ClientSession, NodeSession
from onionpost.proto.testing import DeterministicRng
from onionpost.proto.versions import BLOCK_SIZE, SEALED_CONTENT_SIZE

PATH = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "relay-v1.json"
NOW = 1_800_000_000


class Script:
    """An ``rng`` that hands out given values in order, checking each size: the code uses exactly the file's inputs."""

    def __init__(self, *values: bytes):
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        value = self._values.pop(0)
        assert len(value) == n, f"the code asked for {n} bytes, the script has {len(value)}"
        return value

    def done(self) -> None:
        assert not self._values, f"{len(self._values)} scripted values were not used"


def h(data: bytes) -> str:
    return data.hex()


def build() -> dict:
    draw = DeterministicRng(b"onionpost relay vectors 1.1")
    inputs = {
        name: draw(size)
        for name, size in (
            ("node_identity_seed", 32), ("session_id", 32), ("node_session_secret", 32), ("client_secret", 32),
            ("corr_random_1", 16), ("corr_random_2", 16), ("recipient_auth_seed", 32), ("recipient_dh_secret", 32),
            ("rid", 24), ("snd", 24), ("node_queue_dh_secret", 32), ("delivery_nonce", 24), ("sender_auth_seed", 32),
            ("envelope_secret", 32), ("envelope_corr", 24), ("envelope_nonce", 24), ("answer_nonce", 24),
            ("corr_random_3", 16), ("corr_random_4", 16), ("mid", 16),
        )
    }
    node_public, node_secret = crypto.signing_keypair(Script(inputs["node_identity_seed"]))

    # Handshake.
    node_rng = Script(inputs["session_id"], inputs["node_session_secret"])
    node = NodeSession(node_public, node_secret, rng=node_rng)
    client_rng = Script(
        inputs["client_secret"], inputs["corr_random_1"], inputs["corr_random_2"], inputs["corr_random_3"], inputs["corr_random_4"]
    )
    client = ClientSession(node_public, rng=client_rng)
    node_hello = node.data_to_send()
    client.receive_data(node_hello)
    client.next_event()
    client_hello = client.data_to_send()
    node.receive_data(client_hello)
    node.next_event()
    welcome = node.data_to_send()
    client.receive_data(welcome)
    client.next_event()
    shared = crypto.dh(inputs["client_secret"], crypto.sodium.crypto_scalarmult_base(inputs["node_session_secret"]))
    c2s, s2c = crypto.transport_keys(shared, inputs["session_id"])

    # A command block (NEW, signed, and PING) and the node's answer block.
    recipient_public, recipient_secret = crypto.signing_keypair(Script(inputs["recipient_auth_seed"]))
    recipient_dh_public = crypto.sodium.crypto_scalarmult_base(inputs["recipient_dh_secret"])
    corr_new, t_new = client.transmission(New(recipient_public, recipient_dh_public), None, recipient_secret)
    corr_ping, t_ping = client.transmission(Ping())
    command_block = client.send_packed([t_new, t_ping])
    node_queue_dh_public = crypto.sodium.crypto_scalarmult_base(inputs["node_queue_dh_secret"])
    ids = QueueIds(inputs["rid"], inputs["snd"], node_queue_dh_public)
    response_block = node.send([(corr_new, None, ids), (corr_ping, None, Pong())])
    queue_key = crypto.queue_secret(inputs["recipient_dh_secret"], node_queue_dh_public)
    assert queue_key == crypto.queue_secret(inputs["node_queue_dh_secret"], recipient_dh_public)

    # 1.2: a signed SUB, the node's OK with the pushed MSG, then an ACK the session authenticates (unsigned).
    box = seal_message(queue_key, NOW, b"hello", Script(inputs["delivery_nonce"]))
    corr_sub, t_sub = client.transmission(Subscribe(), inputs["rid"], recipient_secret)
    sub_block = client.send_packed([t_sub])
    sub_answer_block = node.send([(corr_sub, inputs["rid"], Ok()), (None, inputs["rid"], Message(inputs["mid"], box))])
    client.receive_data(response_block + sub_answer_block)
    while client.next_event() is not NEED_DATA:
        pass
    corr_ack, t_ack = client.transmission(Ack(inputs["mid"]), inputs["rid"], recipient_secret)
    assert unpackb(t_ack, None, "ACK")[0] == b"", "the session authenticates the ACK: no signature"
    ack_block = client.send_packed([t_ack])
    node.receive_data(command_block + sub_block + ack_block)
    events = []
    while (event := node.next_event()) is not NEED_DATA:
        events.append(event)
    assert [e.transmission.command.NAME for e in events] == ["NEW", "PING", "SUB", "ACK"], events

    # The sender's forwarded SEND (with its token), the destination's sealed answer, the delivery box.
    body = b"hello"
    sender_public, sender_secret = crypto.signing_keypair(Script(inputs["sender_auth_seed"]))
    send = Send(body, tok=crypto.send_token(body, sender_secret))
    envelope_rng = Script(inputs["envelope_secret"], inputs["envelope_corr"], inputs["envelope_nonce"])
    envelope, response_key = forward.seal_send(node_public, inputs["snd"], send, sender_secret, NOW, envelope_rng)
    opened = forward.open_envelope(node_secret, envelope, NOW)
    inner = packb([opened.transmission.signature, opened.transmission.body])
    answer = forward.seal_response(opened.response_key, Ok(), Script(inputs["answer_nonce"]))
    for script in (node_rng, client_rng, envelope_rng):
        script.done()

    return {
        "about": "Worked examples for docs/protocol/relay.md, protocol 1.2 (wire version 3). Hex unless noted. "
        "Every random value is in 'inputs'; everything else derives from them (see 'derivations'). Plain blocks "
        "are given as their content plus the SHA-256 of the whole 16384-byte block (content padded as the spec says).",
        "inputs": {name: h(value) for name, value in inputs.items()} | {"now": NOW, "body_text": body.decode()},
        "derivations": {
            "node_identity": "public, secret = crypto_sign_seed_keypair(node_identity_seed)",
            "node_hello": "body = msgpack {vmin: 2, vmax: 3, sess: session_id, skey: X25519 base(node_session_secret), node: public}; "
            "content = msgpack {hello: body, sig: sign(secret, 'onionpost/1 hello\\0' ‖ body)}",
            "client_hello": "content = msgpack {v: 3, ckey: X25519 base(client_secret)}",
            "transport_keys": "shared = X25519(client_secret, skey) = X25519(node_session_secret, ckey); "
            "c2s/s2c = BLAKE2b-256(key=shared, 'onionpost/1 c2s'/'onionpost/1 s2c' ‖ session_id)",
            "corr_ids": "corr n = 8-byte big-endian n ‖ corr_random_n (n = 1 to 4)",
            "command_block": "secretbox(pad(content, 16368), nonce = 24 zero bytes, c2s)",
            "response_block": "secretbox(pad(content, 16368), nonce = 24 zero bytes, s2c)",
            "session_authenticated_ack": "SUB: [sign(recipient secret, 'onionpost/1 command\\0' ‖ body), body], body = msgpack "
            "{sess, corr: corr 3, q: rid, cmd: SUB}, sealed with c2s, nonce 1; answer: msgpack [{corr: corr 3, q: rid, r: OK}, "
            "{corr: nil, q: rid, r: MSG, mid, box: delivery box}] sealed with s2c, nonce 1; ACK: ['' (empty signature), "
            "msgpack {sess, corr: corr 4, q: rid, cmd: ACK, mid}] sealed with c2s, nonce 2",
            "queue_key": "BLAKE2b-256(key = X25519(recipient_dh_secret, IDS.dhkey), 'onionpost/1 queue'); "
            "IDS.dhkey = X25519 base(node_queue_dh_secret)",
            "send_token": "KDF(KDF(sender secret[:32], 'onionpost/1 send-token key'), 'onionpost/1 send-token', body)[:16]",
            "stored_token": "BLAKE2b-128('onionpost/1 sent\\0' ‖ rid ‖ tok)",
            "forward_envelope": "epk = X25519 base(envelope_secret); shared = X25519(envelope_secret, "
            "ed25519_pk_to_curve25519(node public)); req/res = KDF(shared, 'onionpost/1 fwd-req'/'fwd-res', epk); "
            "inner body = msgpack {sess: epk, corr: envelope_corr, q: snd, cmd: SEND, body, tok}, signed with the "
            "sender's key; content = pad(msgpack {ts: now, t: msgpack [sig, body]}, 15872); "
            "env = msgpack {epk, box: envelope_nonce ‖ secretbox(content, envelope_nonce, req)}",
            "forward_answer": "answer_nonce ‖ secretbox(pad(msgpack {corr: nil, q: nil, r: 'OK'}, 256), answer_nonce, res)",
            "delivery_box": "delivery_nonce ‖ secretbox(msgpack [now, body], delivery_nonce, queue_key)",
        },
        "node_identity": {"public": h(node_public), "secret": h(node_secret)},
        "node_hello": {"content": h(unpad(node_hello, BLOCK_SIZE)), "block_sha256": hashlib.sha256(node_hello).hexdigest()},
        "client_hello": {"content": h(unpad(client_hello, BLOCK_SIZE)), "block_sha256": hashlib.sha256(client_hello).hexdigest()},
        "welcome": {"content": h(unpad(welcome, BLOCK_SIZE)), "block_sha256": hashlib.sha256(welcome).hexdigest()},
        "transport_keys": {"shared": h(shared), "c2s": h(c2s), "s2c": h(s2c)},
        "recipient": {"auth_public": h(recipient_public), "dh_public": h(recipient_dh_public)},
        "command_block": {
            "corr_ids": [h(corr_new), h(corr_ping)],
            "transmissions": [h(t_new), h(t_ping)],
            "content": h(unpad(crypto.sodium.crypto_secretbox_open(command_block, bytes(24), c2s), SEALED_CONTENT_SIZE)),
            "block": h(command_block),
        },
        "response_block": {
            "content": h(unpad(crypto.sodium.crypto_secretbox_open(response_block, bytes(24), s2c), SEALED_CONTENT_SIZE)),
            "block": h(response_block),
        },
        "queue": {"dhkey": h(node_queue_dh_public), "queue_key": h(queue_key)},
        "session_authenticated_ack": {
            "corr_ids": [h(corr_sub), h(corr_ack)],
            "sub_transmission": h(t_sub),
            "sub_block": h(sub_block),
            "answer_block": h(sub_answer_block),
            "ack_transmission": h(t_ack),
            "ack_block": h(ack_block),
        },
        "send_token": {
            "sender_auth_public": h(sender_public), "tok": h(send.tok), "stored": h(crypto.token_key(inputs["rid"], send.tok)),
        },
        "forward_envelope": {
            "epk": h(opened.ephemeral_key),
            "request_key": h(crypto.envelope_keys(crypto.dh(inputs["envelope_secret"], crypto.identity_dh_public(node_public)),
                                                  opened.ephemeral_key)[0]),
            "response_key": h(response_key),
            "inner_transmission": h(inner),
            "content": h(packb({"ts": opened.timestamp, "t": inner})),
            "envelope": h(envelope),
            "answer": h(answer),
        },
        "delivery_box": {"box": h(box)},
    }


def main() -> int:
    text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        if PATH.read_text() != text:
            print(f"{PATH} is out of date: run scripts/gen_vectors.py", file=sys.stderr)
            return 1
        print("vectors up to date")
        return 0
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
