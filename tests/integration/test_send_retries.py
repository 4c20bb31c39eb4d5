"""A retried SEND is recognised by its token: stored once, answered OK again (issue 12, item 13)."""

import asyncio
import os
import time

import pytest

from onionpost.proto import Ack, ErrorCode, Forward, ForwardResult, Get, Message, NoMessage, Ok, Send, crypto, forward
from tests.integration.relay_helpers import RawClient, new_queue

pytestmark = pytest.mark.timeout(90)


async def messages_in(client, q) -> list[bytes]:
    """Take every message of the queue (GET and ACK until NONE); return their ids."""
    mids = []
    while isinstance(got := await client.request(Get(), q.rid, q.rsecret), Message):
        mids.append(got.mid)
        assert isinstance(await client.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
    assert isinstance(got, NoMessage)
    return mids


async def send_and_vanish(node, q, send: Send) -> None:
    """Send and close without reading the answer: the sender cannot know whether it was stored."""
    client = await RawClient.connect(node.address)
    try:
        _, packed = client.build(send, q.snd, q.ssecret)
        await client.send_packed(packed)
    finally:
        await client.close()


async def test_a_retried_send_is_stored_once_also_across_a_node_kill(node_factory):
    node = node_factory("retries")
    recipient = await RawClient.connect(node.address)
    q = await new_queue(recipient, node=node)
    await recipient.close()
    body = os.urandom(2000)
    send = Send(body, tok=crypto.send_token(body, q.ssecret))

    await send_and_vanish(node, q, send)  # the OK is lost
    client = await RawClient.connect(node.address)
    try:
        for _ in range(3):  # retries, each on a new session as after a reconnect
            assert isinstance(await client.request(send, q.snd, q.ssecret), Ok)
        other = Send(b"another message", tok=os.urandom(16))
        assert isinstance(await client.request(other, q.snd, q.ssecret), Ok)
        untokened = Send(b"no token")
        assert isinstance(await client.request(untokened, q.snd, q.ssecret), Ok)
        assert isinstance(await client.request(untokened, q.snd, q.ssecret), Ok)  # without tok: a new message each time
    finally:
        await client.close()

    node.kill()  # SIGKILL: the token was committed with the message
    node.start()
    client = await RawClient.connect(node.address)
    try:
        assert isinstance(await client.request(send, q.snd, q.ssecret), Ok)
        assert len(await messages_in(client, q)) == 4  # body once, the other once, the untokened twice
        # After the ACK, within the token's life, a retry still stores nothing.
        assert isinstance(await client.request(send, q.snd, q.ssecret), Ok)
        assert await messages_in(client, q) == []
        # A retry without the sender key is refused before the token is even looked at.
        assert (await client.request(send, q.snd, crypto.signing_keypair()[1])).code == ErrorCode.AUTH
    finally:
        await client.close()


async def test_a_forwarded_retry_in_a_new_envelope_is_recognised(node_factory):
    a, b = node_factory("a"), node_factory("b")
    recipient = await RawClient.connect(b.address)
    sender = await RawClient.connect(a.address)
    try:
        q = await new_queue(recipient, node=b)
        body = b"forwarded once"
        send = Send(body, tok=crypto.send_token(body, q.ssecret))
        first = None
        for _ in range(3):  # a new envelope each time, as the client seals one per attempt
            envelope, key = forward.seal_send(b.address.key, q.snd, send, q.ssecret, int(time.time()))
            first = first or (envelope, key)
            answer = await sender.request(Forward(node=str(b.address), env=envelope))
            assert isinstance(answer, ForwardResult) and isinstance(forward.open_response(key, answer.env), Ok)
        envelope, key = first  # the very same envelope again: the original answer, not "replayed"
        answer = await sender.request(Forward(node=str(b.address), env=envelope))
        assert isinstance(forward.open_response(key, answer.env), Ok)
        assert len(await messages_in(recipient, q)) == 1
    finally:
        await sender.close()
        await recipient.close()
