"""Protocol 1.2 against a real node: GET and ACK authenticated by the session's own subscription.

relay.md "Signatures": in a 1.2 session, GET and ACK on a queue this session is subscribed to may be
unsigned; every other unsigned recipient command is AUTH, and so is any unsigned one in a 1.1 session.
A 1.1 client and a 1.2 node, and a 1.2 client and a 1.1 node, still exchange messages.
"""

import asyncio
import os

import pytest
from aiohttp import web

from onionpost.node.config import NodeConfig
from onionpost.node.datadir import Identity
from onionpost.node.server import NODE_KEY, make_app
from onionpost.node.sqlite_store import SQLiteQueueStore
from onionpost.proto import Ack, Delete, Error, Get, Message, NodeAddress, NoMessage, Ok, Send, Subscribe, SubscriptionEnded, Suspend
from onionpost.proto.versions import PROTOCOL_V1_1, PROTOCOL_V1_2
from onionpost.transport import RelayLink
from tests.integration.relay_helpers import RawClient, new_queue

pytestmark = pytest.mark.timeout(60)

NOT_SUBSCRIBED = "unsigned ACK: this session is not subscribed to the queue"


async def subscribed_with_message(client: RawClient, queue, sender: RawClient, body: bytes = b"one") -> Message:
    """SUB (signed) on ``client``, one SEND from ``sender``; return the MSG pushed to ``client``."""
    assert isinstance(await client.request(Subscribe(), queue.rid, queue.rsecret), Ok)
    assert isinstance(await sender.request(Send(body), queue.snd, queue.ssecret), Ok)
    push = await client.push()
    assert isinstance(push.response, Message)
    return push.response


async def unsigned(client: RawClient, command, queue_id: bytes):
    corr, packed = client.build(command, queue_id, None)
    await client.send_packed(packed)
    return await client.answer(corr)


async def test_unsigned_ack_and_get_on_the_sessions_own_subscription(shared_node):
    recipient = await RawClient.connect(shared_node.address)
    sender = await RawClient.connect(shared_node.address)
    try:
        assert recipient.session.version == PROTOCOL_V1_2
        queue = await new_queue(recipient, node=shared_node)
        first = await subscribed_with_message(recipient, queue, sender)
        assert isinstance(await sender.request(Send(b"two"), queue.snd, queue.ssecret), Ok)
        got = await unsigned(recipient, Get(), queue.rid)
        assert isinstance(got, Message) and got.mid == first.mid
        assert isinstance(await unsigned(recipient, Ack(first.mid), queue.rid), Ok)
        second = (await recipient.push()).response  # the next message follows the unsigned ACK
        assert isinstance(second, Message) and second.mid != first.mid
        assert isinstance(await unsigned(recipient, Ack(second.mid), queue.rid), Ok)
        assert isinstance(await unsigned(recipient, Get(), queue.rid), NoMessage)
    finally:
        await recipient.close()
        await sender.close()


async def test_off_and_del_stay_signed_on_a_subscribed_queue(shared_node):
    """1.2 exempts only GET and ACK: OFF and DEL change the queue for good (relay.md "Threat model")."""
    recipient = await RawClient.connect(shared_node.address)
    sender = await RawClient.connect(shared_node.address)
    try:
        queue = await new_queue(recipient, node=shared_node)
        await subscribed_with_message(recipient, queue, sender)
        for command in (Suspend(), Delete()):
            refused = await unsigned(recipient, command, queue.rid)
            assert isinstance(refused, Error) and (refused.code, refused.detail) == ("AUTH", "not signed with the queue's recipient key")
        assert isinstance(await sender.request(Send(b"still open"), queue.snd, queue.ssecret), Ok)  # not suspended
    finally:
        await recipient.close()
        await sender.close()


async def test_unsigned_ack_needs_this_sessions_subscription(shared_node):
    subscriber = await RawClient.connect(shared_node.address)
    other = await RawClient.connect(shared_node.address)
    try:
        queue = await new_queue(subscriber, node=shared_node)
        message = await subscribed_with_message(subscriber, queue, other)
        # Another session: the queue has a subscriber, but not this session.
        refused = await unsigned(other, Ack(message.mid), queue.rid)
        assert isinstance(refused, Error) and (refused.code, refused.detail) == ("AUTH", NOT_SUBSCRIBED)
        # The same session, on a queue it created but never subscribed to.
        unsubscribed = await new_queue(subscriber, node=shared_node)
        refused = await unsigned(subscriber, Get(), unsubscribed.rid)
        assert isinstance(refused, Error) and refused.code == "AUTH" and "not subscribed" in refused.detail
        # Nothing was applied: the subscriber's own ACK still deletes the message.
        assert isinstance(await unsigned(subscriber, Ack(message.mid), queue.rid), Ok)
    finally:
        await subscriber.close()
        await other.close()


async def test_a_subscription_taken_by_another_session_ends_the_session_authentication(shared_node):
    first = await RawClient.connect(shared_node.address)
    second = await RawClient.connect(shared_node.address)
    try:
        queue = await new_queue(first, node=shared_node)
        message = await subscribed_with_message(first, queue, second)
        assert isinstance(await second.request(Subscribe(), queue.rid, queue.rsecret), Ok)
        assert isinstance((await first.push()).response, SubscriptionEnded)
        refused = await unsigned(first, Ack(message.mid), queue.rid)
        assert isinstance(refused, Error) and (refused.code, refused.detail) == ("AUTH", NOT_SUBSCRIBED)
    finally:
        await first.close()
        await second.close()


async def test_unsigned_ack_is_refused_in_a_1_1_session(shared_node):
    recipient = await RawClient.connect(shared_node.address, max_version=PROTOCOL_V1_1)
    sender = await RawClient.connect(shared_node.address)
    try:
        assert recipient.session.version == PROTOCOL_V1_1
        queue = await new_queue(recipient, node=shared_node)
        message = await subscribed_with_message(recipient, queue, sender)
        refused = await unsigned(recipient, Ack(message.mid), queue.rid)
        assert isinstance(refused, Error) and (refused.code, refused.detail) == ("AUTH", "not signed with the queue's recipient key")
        assert isinstance(await recipient.request(Ack(message.mid), queue.rid, queue.rsecret), Ok)  # signed: fine
    finally:
        await recipient.close()
        await sender.close()


async def exchange(address: NodeAddress, client_max: int, count: int = 5) -> int:
    """A RelayLink recipient and sender exchange ``count`` messages; return the session version."""
    deliveries: asyncio.Queue = asyncio.Queue()
    recipient = await RelayLink.connect(address, on_push=lambda q, r: deliveries.put_nowait(r), max_version=client_max)
    sender = await RelayLink.connect(address, max_version=client_max)
    try:
        queue = await new_queue(recipient)
        await recipient.request(Subscribe(), queue.rid, queue.rsecret)
        for i in range(count):
            await sender.request(Send(b"m%d" % i), queue.snd, queue.ssecret)
        for _ in range(count):
            message = await asyncio.wait_for(deliveries.get(), 10)
            assert isinstance(message, Message)
            assert isinstance(await recipient.request(Ack(message.mid), queue.rid, queue.rsecret), Ok)
        assert isinstance(await recipient.request(Get(), queue.rid, queue.rsecret), NoMessage)
        return recipient.version
    finally:
        await recipient.close()
        await sender.close()


async def test_a_1_1_client_and_a_1_2_node_still_work(shared_node):
    assert await exchange(shared_node.address, PROTOCOL_V1_1) == PROTOCOL_V1_1
    assert await exchange(shared_node.address, PROTOCOL_V1_2) == PROTOCOL_V1_2


@pytest.fixture
async def node_1_1(tmp_path):
    """An in-process node that offers protocol 1.1 only, as a node from before 1.2 does."""
    identity = Identity.from_seed(os.urandom(32))
    app = make_app(NodeConfig(), identity, SQLiteQueueStore(tmp_path / "node.db"))
    app[NODE_KEY].max_version = PROTOCOL_V1_1
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield NodeAddress(identity.public, "127.0.0.1", runner.addresses[0][1])
    await runner.cleanup()


async def test_a_1_2_client_and_a_1_1_node_still_work(node_1_1):
    assert await exchange(node_1_1, PROTOCOL_V1_2) == PROTOCOL_V1_1


async def test_the_link_signs_again_when_the_subscription_ended_before_the_node_read_the_ack(shared_node):
    """The END is on its way while the link still believes it is subscribed: AUTH, then the same ACK signed."""
    pushes: asyncio.Queue = asyncio.Queue()
    link = await RelayLink.connect(shared_node.address, on_push=lambda q, r: pushes.put_nowait(r))
    other = await RawClient.connect(shared_node.address)
    try:
        queue = await new_queue(link, node=shared_node)
        await link.request(Subscribe(), queue.rid, queue.rsecret)
        assert isinstance(await other.request(Send(b"x"), queue.snd, queue.ssecret), Ok)
        message = await asyncio.wait_for(pushes.get(), 10)
        assert isinstance(await other.request(Subscribe(), queue.rid, queue.rsecret), Ok)
        assert isinstance(await asyncio.wait_for(pushes.get(), 10), SubscriptionEnded)
        link._session._subscribed.add(queue.rid)  # as if the END had not been read yet
        assert link._session.signs_by_session(Ack(message.mid), queue.rid)
        assert isinstance(await link.request(Ack(message.mid), queue.rid, queue.rsecret), Ok)
        assert not link._session.subscribed(queue.rid)
    finally:
        await link.close()
        await other.close()
