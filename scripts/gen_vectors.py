#!/usr/bin/env python3
"""Generate tests/vectors/relay-v1.json: worked examples of relay protocol v1.

Everything is derived from fixed seeds, so the output never changes unless the
protocol does. `python scripts/gen_vectors.py --check` compares instead of writing.
See docs/protocol/relay.md, "Test vectors".
"""

import hashlib
import json
import sys
from pathlib import Path


from onionpost.proto import New, Ping, Pong, QueueIds, Send, crypto, forward
from onionpost.proto.block import unpad
from onionpost.proto.delivery import seal_message
from onionpost.proto.session import ClientSession, NodeSession
from onionpost.proto.testing import DeterministicRng
from onionpost.proto.versions import BLOCK_SIZE, SEALED_CONTENT_SIZE

PATH = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "relay-v1.json"
NOW = 1_800_000_000


def h(data: bytes) -> str:
    return data.hex()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build() -> dict:
    node_rng, client_rng, key_rng = DeterministicRng(b"node"), DeterministicRng(b"client"), DeterministicRng(b"keys")
    node_seed = key_rng(32)
    node_public, node_secret = _seed_keypair(node_seed)
    node = NodeSession(node_public, node_secret, rng=node_rng)
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
    c2s, s2c = client._sealer._key, client._opener._key  # noqa: SLF001 (vectors expose keys on purpose)

    recipient_seed, dh_secret = key_rng(32), key_rng(32)
    rpub, rsec = _seed_keypair(recipient_seed)
    dpub = crypto.sodium.crypto_scalarmult_base(dh_secret)
    corr_new, t_new = client.transmission(New(rpub, dpub), None, rsec)
    corr_ping, t_ping = client.transmission(Ping())
    command_block = client.send_packed([t_new, t_ping])

    ids = QueueIds(key_rng(24), key_rng(24), key_rng(32))
    response_block = node.send([(corr_new, None, ids), (corr_ping, None, Pong())])
    response_content = crypto.sodium.crypto_secretbox_open(response_block, bytes(24), s2c)

    sender_seed = key_rng(32)
    spub, ssec = _seed_keypair(sender_seed)
    env_rng = DeterministicRng(b"envelope")
    envelope, response_key = forward.seal_send(node_public, ids.snd, Send(b"hello"), ssec, NOW, env_rng)

    queue_key = key_rng(32)
    box = seal_message(queue_key, NOW, b"hello", DeterministicRng(b"box"))

    return {
        "about": "Worked examples for docs/protocol/relay.md. Hex unless noted. Blocks are 16384 bytes; "
        "plaintext blocks are given as their content (before the 2-byte length and '#' padding) plus the "
        "SHA-256 of the whole block.",
        "node_identity": {"seed": h(node_seed), "public": h(node_public)},
        "node_hello": {"content": h(unpad(node_hello, BLOCK_SIZE)), "block_sha256": digest(node_hello)},
        "client_hello": {"content": h(unpad(client_hello, BLOCK_SIZE)), "block_sha256": digest(client_hello)},
        "welcome": {"content": h(unpad(welcome, BLOCK_SIZE)), "block_sha256": digest(welcome)},
        "transport_keys": {"c2s": h(c2s), "s2c": h(s2c)},
        "recipient": {"auth_seed": h(recipient_seed), "auth_public": h(rpub), "dh_secret": h(dh_secret), "dh_public": h(dpub)},
        "command_block": {
            "note": "first sealed client block: nonce = 24 zero bytes (counter 0), key = c2s",
            "transmissions": [h(t_new), h(t_ping)],
            "corr_ids": [h(corr_new), h(corr_ping)],
            "content": h(unpad(crypto.sodium.crypto_secretbox_open(command_block, bytes(24), c2s), SEALED_CONTENT_SIZE)),
            "block": h(command_block),
        },
        "response_block": {
            "note": "first sealed node block: nonce = 24 zero bytes, key = s2c",
            "content": h(unpad(response_content, SEALED_CONTENT_SIZE)),
            "block_sha256": digest(response_block),
        },
        "forward_envelope": {
            "now": NOW,
            "sender_auth_seed": h(sender_seed),
            "sender_id": h(ids.snd),
            "body": h(b"hello"),
            "rng_seed_text": "envelope",
            "envelope": h(envelope),
            "response_key": h(response_key),
        },
        "delivery_box": {"queue_key": h(queue_key), "ts": NOW, "body": h(b"hello"), "box": h(box)},
    }


def _seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    return crypto.sodium.crypto_sign_seed_keypair(seed)


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
