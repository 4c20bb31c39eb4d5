"""Recompute every derived value of tests/vectors/relay-v1.json from its inputs, as a stranger would:
with libsodium (PyNaCl's bindings) and msgpack only, and the spec (docs/protocol/relay.md).

This file imports nothing of onionpost; ``test_runs_without_onionpost`` runs it in a fresh
interpreter to prove it.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import msgpack
from nacl import bindings as sodium

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "relay-v1.json").read_text())
INPUTS = {k: bytes.fromhex(v) if isinstance(v, str) and k != "body_text" else v for k, v in VECTORS["inputs"].items()}
VERSION = 3  # protocol 1.2 on the wire
OLDEST = 2  # the node also speaks 1.1
BODY = INPUTS["body_text"].encode()


def x(section: str, name: str) -> bytes:
    return bytes.fromhex(VECTORS[section][name])


def packb(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def kdf(key: bytes, label: bytes, context: bytes = b"") -> bytes:
    return sodium.crypto_generichash_blake2b_salt_personal(label + context, digest_size=32, key=key)


def pad(content: bytes, size: int) -> bytes:
    return len(content).to_bytes(2, "big") + content + b"#" * (size - 2 - len(content))


def sign(secret: bytes, domain: bytes, data: bytes) -> bytes:
    return sodium.crypto_sign(domain + data, secret)[:64]


def base(secret: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(secret)


NODE_PUBLIC, NODE_SECRET = sodium.crypto_sign_seed_keypair(INPUTS["node_identity_seed"])
RECIPIENT_PUBLIC, RECIPIENT_SECRET = sodium.crypto_sign_seed_keypair(INPUTS["recipient_auth_seed"])
SENDER_PUBLIC, SENDER_SECRET = sodium.crypto_sign_seed_keypair(INPUTS["sender_auth_seed"])
CORRS = [n.to_bytes(8, "big") + INPUTS[f"corr_random_{n}"] for n in (1, 2, 3, 4)]


def test_node_identity():
    assert (x("node_identity", "public"), x("node_identity", "secret")) == (NODE_PUBLIC, NODE_SECRET)


def test_hellos_and_welcome():
    body = packb({"vmin": OLDEST, "vmax": VERSION, "sess": INPUTS["session_id"], "skey": base(INPUTS["node_session_secret"]),
                  "node": NODE_PUBLIC})
    node_hello = packb({"hello": body, "sig": sign(NODE_SECRET, b"onionpost/1 hello\x00", body)})
    client_hello = packb({"v": VERSION, "ckey": base(INPUTS["client_secret"])})
    welcome = packb({"v": VERSION})
    for name, content in (("node_hello", node_hello), ("client_hello", client_hello), ("welcome", welcome)):
        assert x(name, "content") == content, name
        assert VECTORS[name]["block_sha256"] == hashlib.sha256(pad(content, 16384)).hexdigest(), name


def transport_keys() -> tuple[bytes, bytes]:
    shared = sodium.crypto_scalarmult(INPUTS["client_secret"], base(INPUTS["node_session_secret"]))
    assert shared == sodium.crypto_scalarmult(INPUTS["node_session_secret"], base(INPUTS["client_secret"]))
    assert shared == x("transport_keys", "shared")
    return kdf(shared, b"onionpost/1 c2s", INPUTS["session_id"]), kdf(shared, b"onionpost/1 s2c", INPUTS["session_id"])


def test_transport_keys():
    assert transport_keys() == (x("transport_keys", "c2s"), x("transport_keys", "s2c"))


def test_command_block():
    c2s, _ = transport_keys()
    recipient_dh = base(INPUTS["recipient_dh_secret"])
    new_body = packb({"sess": INPUTS["session_id"], "corr": CORRS[0], "q": None, "cmd": "NEW", "rkey": RECIPIENT_PUBLIC,
                      "dhkey": recipient_dh})
    new = [sign(RECIPIENT_SECRET, b"onionpost/1 command\x00", new_body), new_body]
    ping = [b"", packb({"sess": INPUTS["session_id"], "corr": CORRS[1], "q": None, "cmd": "PING"})]
    content = packb([new, ping])
    vector = VECTORS["command_block"]
    assert [bytes.fromhex(c) for c in vector["corr_ids"]] == CORRS[:2]
    assert [bytes.fromhex(t) for t in vector["transmissions"]] == [packb(new), packb(ping)]
    assert x("command_block", "content") == content
    assert x("command_block", "block") == sodium.crypto_secretbox(pad(content, 16368), bytes(24), c2s)
    assert (x("recipient", "auth_public"), x("recipient", "dh_public")) == (RECIPIENT_PUBLIC, recipient_dh)


def test_response_block_and_queue_key():
    _, s2c = transport_keys()
    node_dh = base(INPUTS["node_queue_dh_secret"])
    content = packb([
        {"corr": CORRS[0], "q": None, "r": "IDS", "rid": INPUTS["rid"], "snd": INPUTS["snd"], "dhkey": node_dh},
        {"corr": CORRS[1], "q": None, "r": "PONG"},
    ])
    assert x("response_block", "content") == content
    assert x("response_block", "block") == sodium.crypto_secretbox(pad(content, 16368), bytes(24), s2c)
    recipient_side = kdf(sodium.crypto_scalarmult(INPUTS["recipient_dh_secret"], node_dh), b"onionpost/1 queue")
    node_side = kdf(sodium.crypto_scalarmult(INPUTS["node_queue_dh_secret"], base(INPUTS["recipient_dh_secret"])), b"onionpost/1 queue")
    assert recipient_side == node_side == x("queue", "queue_key") and x("queue", "dhkey") == node_dh


def nonce(n: int) -> bytes:
    return n.to_bytes(24, "big")


def test_session_authenticated_ack():
    """1.2: a signed SUB, the node's OK and pushed MSG, then the ACK the session authenticates, unsigned."""
    c2s, s2c = transport_keys()
    rid, mid = INPUTS["rid"], INPUTS["mid"]
    sub_body = packb({"sess": INPUTS["session_id"], "corr": CORRS[2], "q": rid, "cmd": "SUB"})
    sub = packb([sign(RECIPIENT_SECRET, b"onionpost/1 command\x00", sub_body), sub_body])
    box = INPUTS["delivery_nonce"] + sodium.crypto_secretbox(packb([INPUTS["now"], BODY]), INPUTS["delivery_nonce"], x("queue", "queue_key"))
    answer = packb([{"corr": CORRS[2], "q": rid, "r": "OK"}, {"corr": None, "q": rid, "r": "MSG", "mid": mid, "box": box}])
    ack = packb([b"", packb({"sess": INPUTS["session_id"], "corr": CORRS[3], "q": rid, "cmd": "ACK", "mid": mid})])
    vector = VECTORS["session_authenticated_ack"]
    assert [bytes.fromhex(c) for c in vector["corr_ids"]] == CORRS[2:]
    assert (x("session_authenticated_ack", "sub_transmission"), x("session_authenticated_ack", "ack_transmission")) == (sub, ack)
    assert x("session_authenticated_ack", "sub_block") == sodium.crypto_secretbox(pad(b"\x91" + sub, 16368), nonce(1), c2s)
    assert x("session_authenticated_ack", "answer_block") == sodium.crypto_secretbox(pad(answer, 16368), nonce(1), s2c)
    assert x("session_authenticated_ack", "ack_block") == sodium.crypto_secretbox(pad(b"\x91" + ack, 16368), nonce(2), c2s)


def send_token() -> bytes:
    return kdf(kdf(SENDER_SECRET[:32], b"onionpost/1 send-token key"), b"onionpost/1 send-token", BODY)[:16]


def test_send_token():
    tok = send_token()
    stored = sodium.crypto_generichash_blake2b_salt_personal(b"onionpost/1 sent\x00" + INPUTS["rid"] + tok, digest_size=16)
    assert (x("send_token", "tok"), x("send_token", "stored"), x("send_token", "sender_auth_public")) == (tok, stored, SENDER_PUBLIC)


def test_forward_envelope_and_answer():
    epk = base(INPUTS["envelope_secret"])
    shared = sodium.crypto_scalarmult(INPUTS["envelope_secret"], sodium.crypto_sign_ed25519_pk_to_curve25519(NODE_PUBLIC))
    request_key, response_key = kdf(shared, b"onionpost/1 fwd-req", epk), kdf(shared, b"onionpost/1 fwd-res", epk)
    body = packb({"sess": epk, "corr": INPUTS["envelope_corr"], "q": INPUTS["snd"], "cmd": "SEND", "body": BODY, "tok": send_token()})
    inner = packb([sign(SENDER_SECRET, b"onionpost/1 command\x00", body), body])
    content = packb({"ts": INPUTS["now"], "t": inner})
    nonce = INPUTS["envelope_nonce"]
    envelope = packb({"epk": epk, "box": nonce + sodium.crypto_secretbox(pad(content, 15872), nonce, request_key)})
    vector = VECTORS["forward_envelope"]
    assert [bytes.fromhex(vector[k]) for k in ("epk", "request_key", "response_key", "inner_transmission", "content", "envelope")] == [
        epk, request_key, response_key, inner, content, envelope]
    nonce = INPUTS["answer_nonce"]
    ok = packb({"corr": None, "q": None, "r": "OK"})
    assert x("forward_envelope", "answer") == nonce + sodium.crypto_secretbox(pad(ok, 256), nonce, response_key)


def test_delivery_box():
    nonce = INPUTS["delivery_nonce"]
    box = nonce + sodium.crypto_secretbox(packb([INPUTS["now"], BODY]), nonce, x("queue", "queue_key"))
    assert x("delivery_box", "box") == box


def test_runs_without_onionpost():
    """Run every check above in a fresh interpreter and show that onionpost was never imported."""
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked" in result.stdout


if __name__ == "__main__":
    checks = [f for name, f in sorted(globals().items()) if name.startswith("test_") and name != "test_runs_without_onionpost"]
    for check in checks:
        check()
    assert not any(name.split(".")[0] == "onionpost" for name in sys.modules), "onionpost was imported"
    print(f"checked {len(checks)} vector groups without onionpost")
