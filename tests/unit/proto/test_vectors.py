"""The committed vectors are what the generator makes now, and the reference code reads them back.

``test_vectors_independent.py`` recomputes them without onionpost.
"""

import json
import subprocess
import sys
from pathlib import Path

from onionpost.proto import Ok, crypto, forward
from onionpost.proto.delivery import open_message

ROOT = Path(__file__).resolve().parents[3]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "relay-v1.json").read_text())


def x(section: str, name: str) -> bytes:
    return bytes.fromhex(VECTORS[section][name])


def test_vectors_are_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_vectors.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_reference_code_opens_the_envelope_and_its_answer():
    _, node_secret = crypto.signing_keypair(lambda n: bytes.fromhex(VECTORS["inputs"]["node_identity_seed"]))
    opened = forward.open_envelope(node_secret, x("forward_envelope", "envelope"), VECTORS["inputs"]["now"])
    assert opened.response_key == x("forward_envelope", "response_key")
    assert opened.transmission.command.body == VECTORS["inputs"]["body_text"].encode()
    assert opened.transmission.command.tok == x("send_token", "tok")
    assert crypto.verify(x("send_token", "sender_auth_public"), crypto.COMMAND_DOMAIN, opened.transmission.body,
                         opened.transmission.signature)
    assert isinstance(forward.open_response(opened.response_key, x("forward_envelope", "answer")), Ok)


def test_the_reference_code_opens_the_delivery_box():
    ts, body = open_message(x("queue", "queue_key"), x("delivery_box", "box"))
    assert (ts, body) == (VECTORS["inputs"]["now"], VECTORS["inputs"]["body_text"].encode())
