"""Protocol 1.2: GET and ACK on a queue the session is subscribed to go unsigned (relay.md "Signatures").

A node session and a client session joined by a fake link (``Pair``); the client decides from what
it has seen of the session (the SUB's OK, END pushes, DEL's OK) and the negotiated version.
"""

import pytest

from onionpost.proto import (
    Ack,
    ClientSession,
    CommandReceived,
    Delete,
    Error,
    Get,
    NodeSession,
    Ok,
    SecureQueue,
    Subscribe,
    Suspend,
    crypto,
)
from onionpost.proto.frames import Message, SubscriptionEnded, session_may_authenticate
from onionpost.proto.testing import DeterministicRng
from onionpost.proto.versions import PROTOCOL_V1_1, PROTOCOL_V1_2

from .conftest import Pair

pytestmark = pytest.mark.timeout(30)

RID = b"r" * 24
OTHER = b"o" * 24
_, RSECRET = crypto.signing_keypair(DeterministicRng(b"recipient"))


def pair_of(client_max: int, node_max: int) -> Pair:
    pair = Pair()
    rng = DeterministicRng(b"versions")
    pair.node = NodeSession(pair.node_public, pair.node_secret, rng=rng, max_version=node_max)
    pair.client = ClientSession(pair.node_public, rng=rng, max_version=client_max)
    pair.handshake()
    return pair


def signatures(pair: Pair, commands) -> list[bytes]:
    """Send ``commands`` (all signed with the recipient key if the client signs them); the signatures the node got."""
    events = pair.to_node([(c, q, RSECRET) for c, q in commands])
    assert all(isinstance(e, CommandReceived) for e in events)
    return [e.transmission.signature for e in events]


def subscribe(pair: Pair, queue: bytes = RID, answer=Ok()) -> None:
    [event] = pair.to_node([(Subscribe(), queue, RSECRET)])
    assert len(event.transmission.signature) == 64
    pair.to_client([(event.transmission.corr, queue, answer), (None, queue, Message(b"m1", b"box"))])


def test_both_1_2_sides_agree_on_1_2():
    pair = pair_of(PROTOCOL_V1_2, PROTOCOL_V1_2)
    assert pair.client.version == pair.node.version == PROTOCOL_V1_2


def test_ack_and_get_go_unsigned_only_after_the_subs_ok():
    pair = pair_of(PROTOCOL_V1_2, PROTOCOL_V1_2)
    assert all(len(s) == 64 for s in signatures(pair, [(Ack(b"m1"), RID), (Get(), RID)]))  # not subscribed yet
    [sub] = pair.to_node([(Subscribe(), RID, RSECRET)])
    assert all(len(s) == 64 for s in signatures(pair, [(Ack(b"m1"), RID)]))  # the SUB is not answered yet
    pair.to_client([(sub.transmission.corr, RID, Ok())])
    assert pair.client.subscribed(RID)
    assert signatures(pair, [(Ack(b"m1"), RID), (Get(), RID)]) == [b"", b""]


def test_other_commands_and_other_queues_stay_signed():
    pair = pair_of(PROTOCOL_V1_2, PROTOCOL_V1_2)
    subscribe(pair)
    commands = [(Subscribe(), RID), (Suspend(), RID), (SecureQueue(b"k" * 32), RID), (Delete(), RID), (Ack(b"m1"), OTHER)]
    assert all(len(s) == 64 for s in signatures(pair, commands))


def test_a_refused_sub_subscribes_nothing():
    pair = pair_of(PROTOCOL_V1_2, PROTOCOL_V1_2)
    subscribe(pair, answer=Error("NO_QUEUE", "no such queue"))
    assert not pair.client.subscribed(RID)
    assert len(signatures(pair, [(Ack(b"m1"), RID)])[0]) == 64


def test_end_and_del_end_the_session_authentication():
    pair = pair_of(PROTOCOL_V1_2, PROTOCOL_V1_2)
    subscribe(pair)
    subscribe(pair, OTHER)
    pair.to_client([(None, RID, SubscriptionEnded())])
    assert not pair.client.subscribed(RID) and pair.client.subscribed(OTHER)
    assert len(signatures(pair, [(Ack(b"m1"), RID)])[0]) == 64
    [delete] = pair.to_node([(Delete(), OTHER, RSECRET)])
    pair.to_client([(delete.transmission.corr, OTHER, Ok())])
    assert not pair.client.subscribed(OTHER)
    assert len(signatures(pair, [(Get(), OTHER)])[0]) == 64


@pytest.mark.parametrize("client_max, node_max", [(PROTOCOL_V1_1, PROTOCOL_V1_2), (PROTOCOL_V1_2, PROTOCOL_V1_1)])
def test_a_1_1_peer_on_either_side_gets_1_1_and_signed_acks(client_max, node_max):
    pair = pair_of(client_max, node_max)
    assert pair.client.version == pair.node.version == PROTOCOL_V1_1
    subscribe(pair)
    assert all(len(s) == 64 for s in signatures(pair, [(Ack(b"m1"), RID), (Get(), RID)]))


def test_only_get_and_ack_from_1_2_on():
    allowed = {name for name in ("KEY", "SUB", "GET", "ACK", "OFF", "DEL") for v in (PROTOCOL_V1_2,)
               if session_may_authenticate(v, type("C", (), {"NAME": name}))}
    assert allowed == {"GET", "ACK"}
    assert not session_may_authenticate(PROTOCOL_V1_1, Ack(b"m"))
    assert not session_may_authenticate(None, Ack(b"m"))


def test_an_auth_answer_to_an_unsigned_ack_means_the_subscription_is_gone():
    """The node read the ACK after the subscription ended (its END is on the way): sign from now on."""
    pair = pair_of(PROTOCOL_V1_2, PROTOCOL_V1_2)
    subscribe(pair)
    [ack] = pair.to_node([(Ack(b"m1"), RID, RSECRET)])
    assert ack.transmission.signature == b""
    pair.to_client([(ack.transmission.corr, RID, Error("AUTH", "unsigned ACK: this session is not subscribed to the queue"))])
    assert not pair.client.subscribed(RID)
    assert len(signatures(pair, [(Ack(b"m1"), RID)])[0]) == 64
