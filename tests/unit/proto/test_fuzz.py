"""Random and mutated input never raises anything but the protocol's own errors."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onionpost.proto import BLOCK_SIZE, NEED_DATA, ClientSession, NodeSession, ProtocolError, crypto, forward
from onionpost.proto.block import pad
from onionpost.proto.frames import decode_response, decode_transmission, packb, unpackb
from onionpost.proto.testing import DeterministicRng
from onionpost.proto import Ping, Send

from .conftest import Pair

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(session, data: bytes) -> None:
    try:
        session.receive_data(data)
        while session.next_event() is not NEED_DATA:
            pass
    except ProtocolError:
        pass


def mutate(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for p, v in zip(positions, values):
        out[p % len(out)] = v
    return bytes(out)


@FUZZ
@given(st.binary(min_size=0, max_size=2 * BLOCK_SIZE))
def test_random_bytes_into_a_fresh_node(data):
    public, secret = crypto.signing_keypair(DeterministicRng(b"n"))
    run(NodeSession(public, secret), data)


@FUZZ
@given(st.binary(min_size=0, max_size=600))
def test_random_padded_hello_into_node_and_client(content):
    block = pad(content, BLOCK_SIZE)
    public, secret = crypto.signing_keypair(DeterministicRng(b"n"))
    run(NodeSession(public, secret), block)
    run(ClientSession(public), block)


@FUZZ
@given(st.lists(st.integers(0, BLOCK_SIZE - 1), min_size=1, max_size=8), st.lists(st.integers(0, 255), min_size=8, max_size=8))
def test_mutated_hello_and_command_blocks(positions, values):
    pair = Pair(b"fuzz")
    node_hello = pair.node.data_to_send()
    run(ClientSession(pair.node_public), mutate(node_hello, positions, values))
    pair.feed(pair.client, node_hello)
    client_hello = pair.client.data_to_send()
    node = NodeSession(pair.node_public, pair.node_secret)
    run(node, mutate(client_hello, positions, values))
    pair.feed(pair.node, client_hello)
    data, _ = pair.client.send([(Ping(), None, None), (Send(b"x"), b"q" * 24, None)])
    run(pair.node, mutate(data, positions, values))


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
                    max_leaves=20))
def test_arbitrary_msgpack_values_as_frames(value):
    for decode in (decode_transmission, decode_response):
        try:
            decode(value)
        except ProtocolError:
            pass
    try:
        decode_transmission([b"", packb(value)])
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 2**40))
def test_random_envelopes(envelope, now):
    _, secret = crypto.signing_keypair(DeterministicRng(b"e"))
    try:
        forward.open_envelope(secret, envelope, now)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=100))
def test_unpack_garbage(data):
    from onionpost.proto import ErrorCode

    try:
        unpackb(data, ErrorCode.SYNTAX, "x")
    except ProtocolError:
        pass
