"""FWD between two real node processes: a client of node A sends to a queue on node B."""

import asyncio
import os
import time

import pytest

from onionpost.node.datadir import free_port
from onionpost.proto import Ack, Error, ErrorCode, Forward, ForwardResult, Get, Message, NodeAddress, NoMessage, Ok, Ping, Send, Subscribe
from onionpost.proto import delivery, forward
from onionpost.proto.frames import packb, unpackb
from tests.integration.relay_helpers import RawClient, new_queue

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def two_nodes(node_factory):
    return node_factory("a"), node_factory("b")


@pytest.fixture
def to_each_store(node_factory, store_url):
    """Two nodes; the destination ``b`` on each store (its envelope replay record is in the SEND's transaction)."""
    return node_factory("a"), node_factory("b", store=store_url)


def seal(node, q, body: bytes, *, signed: bool = True, now: float | None = None):
    return forward.seal_send(node.address.key, q.snd, Send(body=body), q.ssecret if signed else None, int(now or time.time()))


async def test_forward_to_another_node(to_each_store):
    a, b = to_each_store
    sender = await RawClient.connect(a.address)
    recipient = await RawClient.connect(b.address)
    try:
        q = await new_queue(recipient, node=b)
        assert isinstance(await recipient.request(Subscribe(), q.rid, q.rsecret), Ok)
        body = b"sent through node A"
        envelope, response_key = seal(b, q, body)
        answer = await sender.request(Forward(node=str(b.address), env=envelope))
        assert isinstance(answer, ForwardResult), answer
        assert isinstance(forward.open_response(response_key, answer.env), Ok)
        push = await recipient.push()
        assert push.corr is None and push.queue == q.rid and isinstance(push.response, Message)
        assert delivery.open_message(q.queue_key, push.response.box)[1] == body
        assert body not in push.response.box

        # The same envelope again: replayed, answered inside the sealed answer (the envelope opened).
        replay = forward.open_response(response_key, (await sender.request(Forward(node=str(b.address), env=envelope))).env)
        assert isinstance(replay, Error) and replay.code == ErrorCode.ENVELOPE and "replay" in replay.detail

        # A tampered envelope: ENVELOPE.
        envelope, _ = seal(b, q, b"tampered")
        outer = unpackb(envelope, ErrorCode.SYNTAX, "envelope")
        box = bytearray(outer["box"])
        box[40] ^= 1
        tampered = packb({"epk": outer["epk"], "box": bytes(box)})
        answer = await sender.request(Forward(node=str(b.address), env=tampered))
        assert isinstance(answer, Error) and answer.code == ErrorCode.ENVELOPE

        # Sealed for A's key but sent to B: B cannot open it.
        envelope, _ = seal(a, q, b"wrong node")
        answer = await sender.request(Forward(node=str(b.address), env=envelope))
        assert isinstance(answer, Error) and answer.code == ErrorCode.ENVELOPE

        # A stale envelope (sender clock 20 minutes behind): ENVELOPE, sealed (it opened).
        envelope, stale_key = seal(b, q, b"stale", now=time.time() - 1200)
        answer = await sender.request(Forward(node=str(b.address), env=envelope))
        inner = forward.open_response(stale_key, answer.env)
        assert isinstance(inner, Error) and inner.code == ErrorCode.ENVELOPE and "stale" in inner.detail

        # The inner SEND's own errors come back sealed.
        envelope, response_key = seal(b, q, b"unsigned", signed=False)
        answer = await sender.request(Forward(node=str(b.address), env=envelope))
        inner = forward.open_response(response_key, answer.env)
        assert isinstance(inner, Error) and inner.code == ErrorCode.AUTH
        assert await recipient_has_no_more(recipient)
    finally:
        await sender.close()
        await recipient.close()


async def recipient_has_no_more(recipient: RawClient) -> bool:
    try:
        await recipient.reply(timeout=0.5)
    except asyncio.TimeoutError:
        return True
    return False


async def test_forward_reuses_one_link_and_survives_destination_restart(two_nodes):
    a, b = two_nodes
    senders = [await RawClient.connect(a.address) for _ in range(3)]
    recipient = await RawClient.connect(b.address)
    try:
        q = await new_queue(recipient, node=b)
        for i, sender in enumerate(senders):
            envelope, key = seal(b, q, b"from client %d" % i)
            answer = await sender.request(Forward(node=str(b.address), env=envelope))
            assert isinstance(forward.open_response(key, answer.env), Ok)
        await recipient.close()
        assert b.stop() == 0
        envelope, _ = seal(b, q, b"while B is down")
        answer = await senders[0].request(Forward(node=str(b.address), env=envelope), timeout=40)
        assert isinstance(answer, Error) and answer.code == ErrorCode.UNREACHABLE
        b.start()
        envelope, key = seal(b, q, b"after B restarted")
        answer = await senders[1].request(Forward(node=str(b.address), env=envelope), timeout=40)
        assert isinstance(answer, ForwardResult), answer
        assert isinstance(forward.open_response(key, answer.env), Ok)
        recipient = await RawClient.connect(b.address)
        bodies = []
        while not isinstance(got := await recipient.request(Get(), q.rid, q.rsecret), NoMessage):
            bodies.append(delivery.open_message(q.queue_key, got.box)[1])
            assert isinstance(await recipient.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
        assert bodies == [b"from client 0", b"from client 1", b"from client 2", b"after B restarted"]
    finally:
        for sender in senders:
            await sender.close()
        await recipient.close()


async def test_forward_to_own_address_is_local(node_factory):
    node = node_factory("solo")
    client = await RawClient.connect(node.address)
    try:
        q = await new_queue(client, node=node)
        assert isinstance(await client.request(Subscribe(), q.rid, q.rsecret), Ok)
        envelope, key = seal(node, q, b"to myself")
        corr, packed = client.build(Forward(node=str(node.address), env=envelope))
        await client.send_packed(packed)
        first = await client.reply()
        assert first.corr == corr and isinstance(first.response, ForwardResult)
        assert isinstance(forward.open_response(key, first.response.env), Ok)
        push = await client.push()
        assert delivery.open_message(q.queue_key, push.response.box)[1] == b"to myself"
    finally:
        await client.close()


async def test_forward_bad_or_unreachable_destination(node_factory):
    node = node_factory("lonely")
    client = await RawClient.connect(node.address)
    try:
        for bad in ["not an address", "onionpost://abc@127.0.0.1:1", f"onionpost://{'A' * 43}@example.com:80"]:
            answer = await client.request(Forward(node=bad, env=b"x"))
            assert isinstance(answer, Error) and answer.code == ErrorCode.SYNTAX, bad
        nobody = NodeAddress(b"\x01" * 32, "127.0.0.1", free_port("127.0.0.1"))
        answer = await client.request(Forward(node=str(nobody), env=b"x"), timeout=40)
        assert isinstance(answer, Error) and answer.code == ErrorCode.UNREACHABLE
    finally:
        await client.close()


async def test_rfwd_from_a_client_session_is_no_more_than_a_direct_send(node_factory, store_url):
    """Item 5: relay.md allows RFWD from any session; its inner SEND gets exactly the checks of a direct SEND."""
    from onionpost.proto import RelayForward, RelayForwardResult

    b = node_factory("b", store=store_url)
    client = await RawClient.connect(b.address)
    try:
        q = await new_queue(client, node=b)
        envelope, first_key = seal(b, q, b"by RFWD")
        answer = await client.request(RelayForward(env=envelope))
        assert isinstance(answer, RelayForwardResult) and isinstance(forward.open_response(first_key, answer.env), Ok)
        got = await client.request(Get(), q.rid, q.rsecret)
        assert delivery.open_message(q.queue_key, got.box)[1] == b"by RFWD"
        unsigned, key = seal(b, q, b"no signature", signed=False)  # a secured queue: AUTH, as for a direct SEND
        refused = forward.open_response(key, (await client.request(RelayForward(env=unsigned))).env)
        direct = await client.request(Send(body=b"no signature"), q.snd, None)
        assert isinstance(refused, Error) and refused.code == direct.code == ErrorCode.AUTH
        replay = forward.open_response(first_key, (await client.request(RelayForward(env=envelope))).env)
        assert isinstance(replay, Error) and replay.code == ErrorCode.ENVELOPE
    finally:
        await client.close()


async def test_what_comes_back_plain_and_what_sealed(two_nodes):
    """Item 11: before the envelope opens, a plain ERR; once it opens, everything is sealed inside FRES."""
    from onionpost.proto import crypto
    from onionpost.proto.frames import encode_body
    from onionpost.proto.block import pad
    from onionpost.proto.versions import ENVELOPE_CONTENT_SIZE

    a, b = two_nodes
    sender = await RawClient.connect(a.address)
    recipient = await RawClient.connect(b.address)
    try:
        q = await new_queue(recipient, node=b)

        def sealed_with(content):
            """An envelope for B whose content is ``content(epk)`` (to build malformed insides)."""
            epk, esk = crypto.dh_keypair()
            request_key, response_key = crypto.envelope_keys(crypto.dh(esk, crypto.identity_dh_public(b.address.key)), epk)
            box = crypto.secretbox_seal(request_key, pad(content(epk), ENVELOPE_CONTENT_SIZE))
            return packb({"epk": epk, "box": box}), response_key

        def inner(session_of, command, queue):
            return lambda epk: packb({"ts": int(time.time()), "t": packb([b"", encode_body(session_of(epk), os.urandom(24), queue, command)])})

        async def forwarded(envelope):
            return await sender.request(Forward(node=str(b.address), env=envelope))

        # Opened, content not msgpack: sealed ENVELOPE.
        envelope, key = sealed_with(lambda epk: b"\xc1")
        assert forward.open_response(key, (await forwarded(envelope)).env).code == ErrorCode.ENVELOPE
        # Opened, the inner transmission is a PING: sealed CMD; signed for another envelope: sealed SESSION.
        envelope, key = sealed_with(inner(lambda epk: epk, Ping(), None))
        assert forward.open_response(key, (await forwarded(envelope)).env).code == ErrorCode.CMD
        envelope, key = sealed_with(inner(lambda epk: os.urandom(32), Send(body=b"x"), q.snd))
        assert forward.open_response(key, (await forwarded(envelope)).env).code == ErrorCode.SESSION
        # Not openable at all: plain ENVELOPE, relayed by A as it came.
        answer = await forwarded(packb({"epk": crypto.dh_keypair()[0], "box": os.urandom(100)}))
        assert isinstance(answer, Error) and answer.code == ErrorCode.ENVELOPE
    finally:
        await sender.close()
        await recipient.close()


async def test_forwarding_to_a_node_whose_hello_key_is_not_the_addresss(two_nodes):
    """Item 11: UNREACHABLE, saying the destination's hello is not signed by the key in its address."""
    from onionpost.proto import crypto

    a, b = two_nodes
    sender = await RawClient.connect(a.address)
    try:
        impostor = NodeAddress(crypto.signing_keypair()[0], b.address.host, b.address.port)
        envelope, _ = forward.seal_send(impostor.key, os.urandom(24), Send(body=b"x"), None, int(time.time()))
        answer = await sender.request(Forward(node=str(impostor), env=envelope))
        assert isinstance(answer, Error) and answer.code == ErrorCode.UNREACHABLE
        assert answer.detail == "the destination node's hello is not signed by the key in its address"
    finally:
        await sender.close()


async def test_fwd_to_the_nodes_own_key_is_applied_locally_whatever_the_host(two_nodes):
    """Item 11: the node holds that key, so it opens the envelope itself, as the destination would."""
    a, _ = two_nodes
    client = await RawClient.connect(a.address)
    try:
        q = await new_queue(client, node=a)
        elsewhere = NodeAddress(a.address.key, "127.0.0.1", 1)  # nothing listens on port 1
        envelope, key = seal(a, q, b"to myself")
        answer = await client.request(Forward(node=str(elsewhere), env=envelope))
        assert isinstance(answer, ForwardResult) and isinstance(forward.open_response(key, answer.env), Ok)
        got = await client.request(Get(), q.rid, q.rsecret)
        assert delivery.open_message(q.queue_key, got.box)[1] == b"to myself"
    finally:
        await client.close()
