"""Node and client sessions over a fake link, whole blocks and byte by byte."""

import pytest

from onionpost.proto import (
    BLOCK_SIZE,
    NEED_DATA,
    ClientSession,
    CommandReceived,
    CommandRejected,
    Connected,
    Error,
    ErrorCode,
    LocalProtocolError,
    New,
    NodeSession,
    Ok,
    Ping,
    Pong,
    RemoteProtocolError,
    Reply,
    Send,
    Subscribe,
    crypto,
)
from onionpost.proto.frames import Message, QueueIds, SubscriptionEnded
from onionpost.proto.versions import PROTOCOL_V1, PROTOCOL_V1_2
from onionpost.proto.testing import DeterministicRng

from .conftest import Pair, drain


@pytest.mark.parametrize("chunk", [None, 1, 1000, BLOCK_SIZE + 7])
def test_handshake_in_any_chunking(chunk):
    pair = Pair(chunk=chunk)
    node_events, client_events = pair.handshake()
    assert node_events == [Connected(PROTOCOL_V1_2, pair.node.session_id)]
    assert client_events == [Connected(PROTOCOL_V1_2, pair.node.session_id)]
    assert pair.client.session_id == pair.node.session_id


def test_every_block_is_exactly_block_size(pair):
    data, _ = pair.client.send([(Ping(), None, None)] * 40)
    assert len(data) == 2 * BLOCK_SIZE  # 40 commands > MAX_BATCH (32): two blocks
    assert len(pair.node.send([(None, None, Pong())])) == BLOCK_SIZE


def test_commands_arrive_in_order_with_signatures_that_verify(pair):
    rpub, rsec = crypto.signing_keypair()
    dpub, _ = crypto.dh_keypair()
    events = pair.to_node([(New(rpub, dpub, "access"), None, rsec), (Ping(), None, None)])
    assert [type(e) for e in events] == [CommandReceived, CommandReceived]
    new = events[0].transmission
    assert new.command == New(rpub, dpub, "access")
    assert crypto.verify(rpub, crypto.COMMAND_DOMAIN, new.body, new.signature)
    assert events[1].transmission.signature == b""


def test_responses_and_pushes_reach_the_client(pair):
    corr = pair.client.next_corr()
    replies = pair.to_client(
        [(corr, None, QueueIds(b"r" * 24, b"s" * 24, b"k" * 32)), (None, b"r" * 24, Message(b"m1", b"box")), (None, b"r" * 24, SubscriptionEnded())]
    )
    assert replies == [
        Reply(corr, None, QueueIds(b"r" * 24, b"s" * 24, b"k" * 32)),
        Reply(None, b"r" * 24, Message(b"m1", b"box")),
        Reply(None, b"r" * 24, SubscriptionEnded()),
    ]


def test_replayed_transmission_in_same_session_is_rejected(pair):
    corr, packed = pair.client.transmission(Ping())
    first = pair.feed(pair.node, pair.client.send_packed([packed]))
    second = pair.feed(pair.node, pair.client.send_packed([packed]))
    assert isinstance(first[0], CommandReceived)
    assert second == [CommandRejected(corr, None, ErrorCode.REPLAY, "correlation id not greater than the previous one")]


def test_transmission_from_another_session_is_rejected():
    first, second = Pair(b"one"), Pair(b"two")
    first.handshake(), second.handshake()
    corr, packed = first.client.transmission(Ping())
    events = second.feed(second.node, second.client.send_packed([packed]))
    assert events == [CommandRejected(corr, None, ErrorCode.SESSION, "command was signed for another session")]


def test_unknown_command_and_bad_fields_are_rejected_per_command(pair):
    from onionpost.proto.frames import packb

    session = pair.node.session_id
    unknown = packb([b"", packb({"sess": session, "corr": bytes([1]) * 24, "q": None, "cmd": "NOPE"})])
    missing = packb([b"", packb({"sess": session, "corr": bytes([2]) * 24, "q": b"q" * 24, "cmd": "SEND"})])
    extra = packb([b"", packb({"sess": session, "corr": bytes([3]) * 24, "q": None, "cmd": "PING", "x": 1})])
    no_queue = packb([b"", packb({"sess": session, "corr": bytes([4]) * 24, "q": None, "cmd": "SUB"})])
    large = packb([b"", packb({"sess": session, "corr": bytes([5]) * 24, "q": b"q" * 24, "cmd": "SEND", "body": b"x" * 15361})])
    events = pair.feed(pair.node, pair.client.send_packed([unknown, missing, extra, no_queue]))
    events += pair.feed(pair.node, pair.client.send_packed([large]))
    assert [e.code for e in events] == [ErrorCode.CMD, ErrorCode.SYNTAX, ErrorCode.SYNTAX, ErrorCode.SYNTAX, ErrorCode.LARGE]
    assert events[0].corr == b"\x01" * 24
    assert "lacks field 'body'" in events[1].detail
    assert "unknown field" in events[2].detail
    assert "needs a queue id" in events[3].detail


def test_tampered_block_is_fatal(pair):
    data, _ = pair.client.send([(Ping(), None, None)])
    tampered = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    pair.node.receive_data(tampered)
    with pytest.raises(RemoteProtocolError) as exc:
        pair.node.next_event()
    assert exc.value.code is ErrorCode.BLOCK
    assert pair.node.closed
    final = pair.node.fatal_error(exc.value.code, exc.value.message)
    assert len(final) == BLOCK_SIZE
    pair.client.receive_data(final)
    assert drain(pair.client) == [Reply(None, None, Error("BLOCK", exc.value.message))]


def test_reordered_blocks_fail_authentication(pair):
    first, _ = pair.client.send([(Ping(), None, None)])
    second, _ = pair.client.send([(Ping(), None, None)])
    pair.node.receive_data(second + first)
    with pytest.raises(RemoteProtocolError, match="replayed or reordered"):
        pair.node.next_event()


def test_client_refuses_a_node_with_another_key():
    rng = DeterministicRng(b"x")
    public, secret = crypto.signing_keypair(rng)
    other, _ = crypto.signing_keypair(rng)
    node = NodeSession(public, secret, rng=rng)
    client = ClientSession(other, rng=rng)
    client.receive_data(node.data_to_send())
    with pytest.raises(RemoteProtocolError) as exc:
        client.next_event()
    assert exc.value.code is ErrorCode.HANDSHAKE


def test_version_mismatch_is_reported_on_both_sides():
    rng = DeterministicRng(b"v")
    public, secret = crypto.signing_keypair(rng)
    node = NodeSession(public, secret, rng=rng, min_version=4, max_version=5)
    client = ClientSession(public, rng=rng)
    client.receive_data(node.data_to_send())
    with pytest.raises(RemoteProtocolError) as exc:
        client.next_event()
    assert exc.value.code is ErrorCode.VERSION and "wire value 4 to wire value 5" in exc.value.message


def test_node_refuses_unsupported_client_version_with_plaintext_error():
    rng = DeterministicRng(b"w")
    public, secret = crypto.signing_keypair(rng)
    node = NodeSession(public, secret, rng=rng, min_version=1, max_version=1)
    client = ClientSession(public, rng=rng, min_version=1, max_version=5)
    # A future client that insists on version 2 (its own minimum) talks to a v1 node.
    client._max_version = 1  # pick 1 to get past the node hello, then forge the hello below
    client.receive_data(node.data_to_send())
    drain(client)
    from onionpost.proto.block import pad
    from onionpost.proto.frames import packb

    node.receive_data(pad(packb({"v": 2, "ckey": crypto.dh_keypair(rng)[0]}), BLOCK_SIZE))
    with pytest.raises(RemoteProtocolError) as exc:
        node.next_event()
    assert exc.value.code is ErrorCode.VERSION
    client.receive_data(node.fatal_error(exc.value.code, exc.value.message))
    with pytest.raises(RemoteProtocolError) as refused:
        client.next_event()
    assert refused.value.code is ErrorCode.VERSION and "refused the handshake" in refused.value.message


def test_commands_before_node_hello_are_a_local_error():
    client = ClientSession(bytes(32))
    with pytest.raises(LocalProtocolError):
        client.send([(Ping(), None, None)])


def test_queue_mismatch_is_a_local_error(pair):
    with pytest.raises(LocalProtocolError):
        pair.client.send([(Subscribe(), None, None)])
    with pytest.raises(LocalProtocolError):
        pair.client.send([(Ping(), b"q" * 24, None)])


def test_correlation_ids_grow(pair):
    corrs = [pair.client.next_corr() for _ in range(300)]
    assert corrs == sorted(corrs) and len(set(corrs)) == 300


def test_send_signed_body_round_trip(pair):
    spub, ssec = crypto.signing_keypair()
    [event] = pair.to_node([(Send(b"hello"), b"q" * 24, ssec)])
    t = event.transmission
    assert t.command == Send(b"hello") and t.queue == b"q" * 24
    assert crypto.verify(spub, crypto.COMMAND_DOMAIN, t.body, t.signature)
    assert not crypto.verify(spub, crypto.COMMAND_DOMAIN, t.body + b"x", t.signature)
    pair.to_client([(t.corr, t.queue, Ok())])


def test_no_events_without_a_whole_block(pair):
    pair.node.receive_data(b"\x00" * (BLOCK_SIZE - 1))
    assert pair.node.next_event() is NEED_DATA


def test_error_details_fit_the_err_frame(pair):
    from onionpost.proto.frames import packb

    fields = {f"x{i}": 1 for i in range(100)}
    body = packb({"sess": pair.node.session_id, "corr": b"\xfe" * 24, "q": None, "cmd": "PING", **fields})
    [rejected] = pair.feed(pair.node, pair.client.send_packed([packb([b"", body])]))
    assert len(rejected.detail) <= 200
    replies = pair.to_client([(rejected.corr, None, Error(rejected.code.value, rejected.detail))])
    assert replies[0].response.code == "SYNTAX"


def test_a_1_0_client_and_a_1_1_node_refuse_each_other_clearly():
    """Version 1.1 changed the wire: a 1.0 peer gets VERSION, on either side, naming both versions."""
    rng = DeterministicRng(b"old")
    public, secret = crypto.signing_keypair(rng)
    old_client = ClientSession(public, rng=rng, min_version=PROTOCOL_V1, max_version=PROTOCOL_V1)
    old_client.receive_data(NodeSession(public, secret, rng=rng).data_to_send())
    with pytest.raises(RemoteProtocolError) as exc:
        old_client.next_event()
    assert exc.value.code is ErrorCode.VERSION
    assert exc.value.message == "the node speaks protocol 1.1 to 1.2, this client 1.0"

    old_node = NodeSession(public, secret, rng=rng, min_version=PROTOCOL_V1, max_version=PROTOCOL_V1)
    client = ClientSession(public, rng=rng)
    client.receive_data(old_node.data_to_send())
    with pytest.raises(RemoteProtocolError) as exc:
        client.next_event()
    assert exc.value.message == "the node speaks protocol 1.0, this client 1.1 to 1.2"

    # A client that sends a 1.0 hello anyway gets a plain VERSION error instead of the welcome.
    from onionpost.proto.block import pad
    from onionpost.proto.frames import packb

    node = NodeSession(public, secret, rng=rng)
    node.receive_data(pad(packb({"v": PROTOCOL_V1, "ckey": crypto.dh_keypair(rng)[0]}), BLOCK_SIZE))
    with pytest.raises(RemoteProtocolError) as exc:
        node.next_event()
    assert exc.value.code is ErrorCode.VERSION and exc.value.message == "protocol 1.0 not supported: this node speaks 1.1 to 1.2"


def malformed(session_id: bytes, corr) -> list:
    """Transmissions whose corr cannot be read, then one whose corr can but nothing else is right."""
    from onionpost.proto.frames import packb

    return [
        {"not": "a pair"},
        [b"", b"\xc1"],  # body not msgpack
        [b"", packb([1, 2])],  # body not a map
        [b"", packb({"sess": session_id, "q": None, "cmd": "PING"})],  # no corr
        [b"", packb({"sess": session_id, "corr": b"c" * 23, "q": None, "cmd": "PING"})],
        [b"", packb({"sess": session_id, "corr": b"c" * 31, "q": None, "cmd": "PING"})],
        [b"", packb({"sess": session_id, "corr": "text" * 6, "q": None, "cmd": "PING"})],
        [b"x" * 10, packb({"sess": session_id, "corr": corr, "q": None, "cmd": "NOPE"})],
    ]


def test_every_transmission_gets_one_answer_even_when_its_corr_is_unreadable(pair):
    """Item 1: an unreadable corr is answered SYNTAX with an empty corr (not nil, which marks pushes)."""
    from onionpost.proto.frames import packb

    corr = pair.client.next_corr()
    items = malformed(pair.node.session_id, corr)
    events = pair.feed(pair.node, pair.client.send_packed([packb(item) for item in items]))
    assert [e.corr for e in events] == [b""] * 7 + [corr]
    assert [e.code for e in events] == [ErrorCode.SYNTAX] * 8  # the last: a 10-byte signature
    replies = pair.to_client([(e.corr, e.queue, Error(e.code.value, e.detail)) for e in events])
    assert [r.corr for r in replies] == [b""] * 7 + [corr]  # an empty corr decodes on the client side


def test_a_readable_corr_is_used_up_whatever_the_answer(pair):
    """Item 2: SYNTAX-, SESSION- and AUTH-rejected commands use up their corr like accepted ones."""
    from onionpost.proto.frames import encode_body, packb

    def send_body(corr: bytes, **fields) -> CommandRejected | CommandReceived:
        body = {"sess": pair.node.session_id, "corr": corr, "q": None, "cmd": "PING", **fields}
        [event] = pair.feed(pair.node, pair.client.send_packed([packb([b"", packb(body)])]))
        return event

    assert send_body(b"\x10" + bytes(23), extra=1).code is ErrorCode.SYNTAX
    lower = send_body(b"\x0f" + bytes(23))
    assert lower.code is ErrorCode.REPLAY and lower.detail == "correlation id not greater than the previous one"
    assert send_body(b"\x20" + bytes(23), sess=b"s" * 32).code is ErrorCode.SESSION
    assert send_body(b"\x1f" + bytes(23)).code is ErrorCode.REPLAY
    assert isinstance(send_body(b"\x21" + bytes(23)), CommandReceived)
    # The greatest corr uses up the session: every later command is REPLAY, saying so.
    assert send_body(b"\xff" * 24, extra=1).code is ErrorCode.SYNTAX
    used_up = send_body(b"\x22" + bytes(23))
    assert used_up.code is ErrorCode.REPLAY and "open a new session" in used_up.detail
    assert encode_body  # (imported for symmetry with the other tests)
