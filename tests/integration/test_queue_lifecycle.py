"""A real node process and real WebSocket clients: the queue life cycle and subscriptions."""

import asyncio
import os

import pytest

from onionpost.proto import (
    Ack,
    Delete,
    ErrorCode,
    Get,
    Message,
    NoMessage,
    Ok,
    Ping,
    Pong,
    Send,
    Subscribe,
    SubscriptionEnded,
    Suspend,
)
from onionpost.proto import delivery
from tests.integration.conftest import STORES, finish
from tests.integration.relay_helpers import NodeProcess, RawClient, new_queue
from onionpost.transport import RelayError, RelayLink

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=STORES)
def shared_node(request, tmp_path_factory):
    """One node per store for this module: every test here runs on SQLite and on PostgreSQL."""
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_cluster").url(f"lifecycle{os.getpid()}")
    node = NodeProcess.create(tmp_path_factory.mktemp(request.param) / "node", store=store).start()
    yield node
    finish([node])


class Pushes:
    """on_push handler for RelayLink that keeps pushes in a queue."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, queue_id, response):
        self.queue.put_nowait((queue_id, response))

    async def next(self, timeout: float = 10.0):
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def none(self, wait: float = 0.3) -> bool:
        await asyncio.sleep(wait)
        return self.queue.empty()


async def test_full_life_cycle(shared_node):
    pushes = Pushes()
    recipient = await RelayLink.connect(shared_node.address, on_push=pushes)
    sender = await RelayLink.connect(shared_node.address)
    try:
        assert isinstance(await recipient.request(Ping()), Pong)
        q = await new_queue(recipient, secure=False, node=shared_node)
        assert q.rid != q.snd

        # Connection request path: an unsigned SEND before the queue is secured.
        request_body = b"connection request carrying the sender key"
        assert isinstance(await sender.request(Send(body=request_body), q.snd, None), Ok)
        from onionpost.proto import crypto, SecureQueue

        q.skey, q.ssecret = crypto.signing_keypair()
        assert isinstance(await recipient.request(SecureQueue(skey=q.skey), q.rid, q.rsecret), Ok)

        bodies = [b"first message " * 20, b"second message", b"third"]
        for body in bodies:
            assert isinstance(await sender.request(Send(body=body), q.snd, q.ssecret), Ok)

        # SUB: OK, then the oldest message is pushed; only one in flight.
        assert isinstance(await recipient.request(Subscribe(), q.rid, q.rsecret), Ok)
        received = []
        for expected in [request_body, *bodies[:2]]:
            queue_id, msg = await pushes.next()
            assert queue_id == q.rid and isinstance(msg, Message)
            assert await pushes.none(), "a second message was pushed before the ACK"
            ts, body = delivery.open_message(q.queue_key, msg.box)
            assert body == expected and ts > 1_600_000_000
            assert expected not in msg.box and msg.box != expected  # uploaded bytes never downloaded
            received.append(body)
            assert isinstance(await recipient.request(Ack(mid=msg.mid), q.rid, q.rsecret), Ok)

        # The third is in flight now; GET shows the same oldest message.
        _, in_flight = await pushes.next()
        got = await recipient.request(Get(), q.rid, q.rsecret)
        assert isinstance(got, Message) and got.mid == in_flight.mid
        assert delivery.open_message(q.queue_key, got.box)[1] == bodies[2]
        with pytest.raises(RelayError) as err:
            await recipient.request(Ack(mid=b"\x00" * 16), q.rid, q.rsecret)
        assert err.value.code == ErrorCode.NO_MSG
        assert isinstance(await recipient.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
        assert isinstance(await recipient.request(Get(), q.rid, q.rsecret), NoMessage)

        # Nothing in flight: a new message is pushed at once.
        assert isinstance(await sender.request(Send(body=b"live"), q.snd, q.ssecret), Ok)
        _, live = await pushes.next()
        assert delivery.open_message(q.queue_key, live.box)[1] == b"live"
        assert isinstance(await recipient.request(Ack(mid=live.mid), q.rid, q.rsecret), Ok)

        # OFF: sends refused, the recipient still reads.
        assert isinstance(await sender.request(Send(body=b"before off"), q.snd, q.ssecret), Ok)
        _, before_off = await pushes.next()
        assert isinstance(await recipient.request(Suspend(), q.rid, q.rsecret), Ok)
        with pytest.raises(RelayError) as err:
            await sender.request(Send(body=b"after off"), q.snd, q.ssecret)
        assert err.value.code == ErrorCode.SUSPENDED
        assert isinstance(await recipient.request(Get(), q.rid, q.rsecret), Message)
        assert isinstance(await recipient.request(Ack(mid=before_off.mid), q.rid, q.rsecret), Ok)
        assert isinstance(await recipient.request(Subscribe(), q.rid, q.rsecret), Ok)

        # DEL: gone for both sides.
        assert isinstance(await recipient.request(Delete(), q.rid, q.rsecret), Ok)
        for command, queue_id, key in [(Get(), q.rid, q.rsecret), (Send(body=b"x"), q.snd, q.ssecret)]:
            with pytest.raises(RelayError) as err:
                await (recipient if queue_id == q.rid else sender).request(command, queue_id, key)
            assert err.value.code == ErrorCode.NO_QUEUE
    finally:
        await recipient.close()
        await sender.close()


async def test_second_subscriber_ends_the_first(shared_node):
    first_pushes, second_pushes = Pushes(), Pushes()
    first = await RelayLink.connect(shared_node.address, on_push=first_pushes)
    second = await RelayLink.connect(shared_node.address, on_push=second_pushes)
    try:
        q = await new_queue(first, node=shared_node)
        assert isinstance(await first.request(Subscribe(), q.rid, q.rsecret), Ok)
        assert isinstance(await second.request(Subscribe(), q.rid, q.rsecret), Ok)
        queue_id, end = await first_pushes.next()
        assert queue_id == q.rid and isinstance(end, SubscriptionEnded)
        assert isinstance(await first.request(Send(body=b"to the new subscriber"), q.snd, q.ssecret), Ok)
        _, msg = await second_pushes.next()
        assert delivery.open_message(q.queue_key, msg.box)[1] == b"to the new subscriber"
        assert await first_pushes.none()

        # DEL from the first session: the subscriber (second) gets END.
        assert isinstance(await first.request(Delete(), q.rid, q.rsecret), Ok)
        queue_id, end = await second_pushes.next()
        assert queue_id == q.rid and isinstance(end, SubscriptionEnded)
    finally:
        await first.close()
        await second.close()


async def test_resubscribe_redelivers_in_flight_message(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        assert isinstance(await client.request(Send(body=b"once"), q.snd, q.ssecret), Ok)
        assert isinstance(await client.request(Subscribe(), q.rid, q.rsecret), Ok)
        first = (await client.push()).response
        # The push comes right after the SUB's OK, in order.
        assert isinstance(await client.request(Subscribe(), q.rid, q.rsecret), Ok)
        again = (await client.push()).response
        assert isinstance(first, Message) and again.mid == first.mid
    finally:
        await client.close()


async def test_answers_come_in_command_order(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        commands = []
        for i in range(20):
            commands.append(client.build(Send(body=b"%d" % i), q.snd, q.ssecret))
            commands.append(client.build(Ping()))
        await client.send_packed(*[packed for _, packed in commands])
        answers = [await client.reply() for _ in commands]
        assert [a.corr for a in answers] == [corr for corr, _ in commands]
        assert all(isinstance(a.response, (Ok, Pong)) for a in answers)
    finally:
        await client.close()
