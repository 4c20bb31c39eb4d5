"""Every way a command can be refused for lack of authority or room, on a real node."""

import pytest

from onionpost.proto import (
    Ack,
    Delete,
    Error,
    ErrorCode,
    Get,
    New,
    Ok,
    QueueIds,
    SecureQueue,
    Send,
    Subscribe,
    Suspend,
)
from onionpost.proto import crypto
from tests.integration.relay_helpers import RawClient, new_queue

pytestmark = pytest.mark.timeout(60)


def code_of(response) -> str | None:
    return response.code if isinstance(response, Error) else None


async def test_wrong_keys_are_auth(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        _, stranger = crypto.signing_keypair()
        for command in [SecureQueue(skey=crypto.signing_keypair()[0]), Subscribe(), Get(), Ack(mid=b"m"), Suspend(), Delete()]:
            assert code_of(await client.request(command, q.rid, stranger)) == ErrorCode.AUTH, command
            assert code_of(await client.request(command, q.rid, None)) == ErrorCode.AUTH, command
        # The sender key is not the recipient key, and vice versa.
        assert code_of(await client.request(Get(), q.rid, q.ssecret)) == ErrorCode.AUTH
        assert code_of(await client.request(Send(body=b"x"), q.snd, q.rsecret)) == ErrorCode.AUTH
        assert code_of(await client.request(Send(body=b"x"), q.snd, stranger)) == ErrorCode.AUTH
        # NEW signed with a key other than its rkey.
        rkey, _ = crypto.signing_keypair()
        assert code_of(await client.request(New(rkey=rkey, dhkey=crypto.dh_keypair()[0]), None, stranger)) == ErrorCode.AUTH
        # Nothing was applied: the queue still answers its real keys.
        assert isinstance(await client.request(Send(body=b"ok"), q.snd, q.ssecret), Ok)
        assert not isinstance(await client.request(Get(), q.rid, q.rsecret), Error)
    finally:
        await client.close()


async def test_replay_in_the_same_session(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        corr, packed = client.build(Send(body=b"once"), q.snd, q.ssecret)
        await client.send_packed(packed)
        assert isinstance(await client.answer(corr), Ok)
        await client.send_packed(packed)  # the very same signed bytes again
        assert code_of(await client.answer(corr)) == ErrorCode.REPLAY
        got = await client.request(Get(), q.rid, q.rsecret)
        assert isinstance(await client.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
        assert code_of(await client.request(Ack(mid=got.mid), q.rid, q.rsecret)) == ErrorCode.NO_MSG
    finally:
        await client.close()


async def test_replay_in_another_session(shared_node):
    first = await RawClient.connect(shared_node.address)
    second = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(first, node=shared_node)
        corr, captured = first.build(Send(body=b"captured"), q.snd, q.ssecret)
        await first.send_packed(captured)
        assert isinstance(await first.answer(corr), Ok)
        await second.send_packed(captured)
        assert code_of(await second.answer(corr)) == ErrorCode.SESSION
        corr, captured_get = first.build(Delete(), q.rid, q.rsecret)  # never sent by its own session
        await second.send_packed(captured_get)
        assert code_of(await second.answer(corr)) == ErrorCode.SESSION
        assert not isinstance(await first.request(Get(), q.rid, q.rsecret), Error)  # not deleted
    finally:
        await first.close()
        await second.close()


async def test_unsecured_queue_limits(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, secure=False, node=shared_node)
        skey, ssecret = crypto.signing_keypair()
        assert code_of(await client.request(Send(body=b"signed"), q.snd, ssecret)) == ErrorCode.AUTH
        for i in range(3):
            assert isinstance(await client.request(Send(body=b"request %d" % i), q.snd, None), Ok)
        assert code_of(await client.request(Send(body=b"fourth"), q.snd, None)) == ErrorCode.LIMIT
        # Once secured: signed sends only.
        assert isinstance(await client.request(SecureQueue(skey=skey), q.rid, q.rsecret), Ok)
        assert isinstance(await client.request(SecureQueue(skey=skey), q.rid, q.rsecret), Ok)  # idempotent retry
        other, _ = crypto.signing_keypair()
        assert code_of(await client.request(SecureQueue(skey=other), q.rid, q.rsecret)) == ErrorCode.SECURED
        assert code_of(await client.request(Send(body=b"unsigned"), q.snd, None)) == ErrorCode.AUTH
        assert isinstance(await client.request(Send(body=b"signed"), q.snd, ssecret), Ok)
    finally:
        await client.close()


async def test_quota(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        for start in range(0, 128, 32):
            built = [client.build(Send(body=b"%d" % i), q.snd, q.ssecret) for i in range(start, start + 32)]
            await client.send_packed(*[p for _, p in built])
            for corr, _ in built:
                assert isinstance(await client.answer(corr), Ok)
        assert code_of(await client.request(Send(body=b"129"), q.snd, q.ssecret)) == ErrorCode.QUOTA
        got = await client.request(Get(), q.rid, q.rsecret)
        assert isinstance(await client.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
        assert isinstance(await client.request(Send(body=b"room again"), q.snd, q.ssecret), Ok)
        assert code_of(await client.request(Send(body=b"full again"), q.snd, q.ssecret)) == ErrorCode.QUOTA
    finally:
        await client.close()


async def test_access_keys(node_factory):
    node = node_factory("private", access_keys=("first-key", "second-key"))
    client = await RawClient.connect(node.address)
    try:
        rkey, rsecret = crypto.signing_keypair()
        dh = crypto.dh_keypair()[0]
        assert code_of(await client.request(New(rkey=rkey, dhkey=dh), None, rsecret)) == ErrorCode.ACCESS
        assert code_of(await client.request(New(rkey=rkey, dhkey=dh, akey="wrong-key"), None, rsecret)) == ErrorCode.ACCESS
        assert code_of(await client.request(New(rkey=rkey, dhkey=dh, akey="first-ke"), None, rsecret)) == ErrorCode.ACCESS
        assert isinstance(await client.request(New(rkey=rkey, dhkey=dh, akey="second-key"), None, rsecret), QueueIds)
        q = await new_queue(client, akey="first-key", node=node)
        # Senders never need an access key.
        sender = await RawClient.connect(node.address)
        try:
            assert isinstance(await sender.request(Send(body=b"no key needed"), q.snd, q.ssecret), Ok)
        finally:
            await sender.close()
    finally:
        await client.close()
