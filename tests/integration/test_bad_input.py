"""Malformed and hostile input: the node answers with the right error and keeps running."""

import asyncio
import os
from dataclasses import dataclass

import aiohttp
import msgpack
import pytest

from onionpost.proto import BLOCK_SIZE, MAX_BODY, Command, Error, ErrorCode, Forward, Get, Ok, Ping, Pong, RelayForward, Send
from onionpost.proto.block import unpad
from onionpost.proto.frames import decode_response, encode_body, packb
from tests.integration.relay_helpers import RawClient, new_queue

pytestmark = pytest.mark.timeout(60)


async def still_alive(node) -> None:
    client = await RawClient.connect(node.address)
    try:
        assert isinstance(await client.request(Ping()), Pong)
    finally:
        await client.close()


async def plain_error_after_hello(client: RawClient) -> str:
    """Before the handshake completes the fatal ERR is a plain block after the node hello."""
    hello = await client.ws.receive(timeout=10)
    assert hello.type == aiohttp.WSMsgType.BINARY and len(hello.data) == BLOCK_SIZE
    final = await client.ws.receive(timeout=10)
    assert final.type == aiohttp.WSMsgType.BINARY and len(final.data) == BLOCK_SIZE
    [item] = msgpack.unpackb(unpad(final.data, BLOCK_SIZE))
    _, _, response = decode_response(item)
    closing = await client.ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    return response.code


@pytest.mark.parametrize("message", [b"", b"x" * 100, b"x" * (BLOCK_SIZE - 1), b"x" * (BLOCK_SIZE + 1), b"x" * (3 * BLOCK_SIZE)])
async def test_wrong_block_size_is_fatal(shared_node, message):
    client = await RawClient.connect(shared_node.address)
    try:
        await client.send_raw(message)
        assert await client.expect_close() == [ErrorCode.BLOCK]
    finally:
        await client.close()
    await still_alive(shared_node)


async def test_wrong_size_before_handshake_gets_plain_error(shared_node):
    client = await RawClient.connect(shared_node.address, handshake=False)
    try:
        await client.send_raw(b"short")
        assert await plain_error_after_hello(client) == ErrorCode.BLOCK
    finally:
        await client.close()
    await still_alive(shared_node)


async def test_text_message_is_fatal(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        await client.ws.send_str("x" * BLOCK_SIZE)
        assert await client.expect_close() == [ErrorCode.BLOCK]
    finally:
        await client.close()


@pytest.mark.parametrize("hello", [os.urandom(BLOCK_SIZE), b"\x00\x03abc" + b"#" * (BLOCK_SIZE - 5), b"\x00\x00" + b"#" * (BLOCK_SIZE - 2)])
async def test_bad_client_hello(shared_node, hello):
    client = await RawClient.connect(shared_node.address, handshake=False)
    try:
        await client.send_raw(hello)
        assert await plain_error_after_hello(client) in (ErrorCode.HANDSHAKE, ErrorCode.BLOCK)
    finally:
        await client.close()
    await still_alive(shared_node)


async def test_garbage_after_handshake(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        await client.send_raw(os.urandom(BLOCK_SIZE))
        assert await client.expect_close() == [ErrorCode.BLOCK]
    finally:
        await client.close()
    await still_alive(shared_node)


async def test_block_content_not_msgpack(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        await client.send_packed(b"\xc1")  # 0xc1 is never valid msgpack
        assert await client.expect_close() == [ErrorCode.BLOCK]
    finally:
        await client.close()
    await still_alive(shared_node)


async def test_malformed_transmissions_are_answered_not_fatal(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        # Body that is not msgpack: SYNTAX, with an empty corr (no corr to echo; nil would mean a push).
        await client.send_packed(packb([b"", b"\xc1\xc1"]))
        reply = await client.reply()
        assert reply.corr == b"" and reply.response.code == ErrorCode.SYNTAX
        # Not a [signature, body] pair.
        await client.send_packed(packb({"not": "a transmission"}))
        reply = await client.reply()
        assert reply.corr == b"" and reply.response.code == ErrorCode.SYNTAX
        # A field of the wrong type: SYNTAX with the corr.
        corr = client.session.next_corr()
        body = packb({"sess": client.session.session_id, "corr": corr, "q": None, "cmd": "NEW", "rkey": "text", "dhkey": b"x"})
        await client.send_packed(packb([b"", body]))
        assert (await client.answer(corr)).code == ErrorCode.SYNTAX
        assert isinstance(await client.request(Ping()), Pong)  # the session goes on
    finally:
        await client.close()


@dataclass(frozen=True)
class Bogus(Command):
    NAME = "BOGUS"


async def test_unknown_command(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        corr = client.session.next_corr()
        await client.send_packed(packb([b"", encode_body(client.session.session_id, corr, None, Bogus())]))
        answer = await client.answer(corr)
        assert isinstance(answer, Error) and answer.code == ErrorCode.CMD
    finally:
        await client.close()


async def test_unknown_queue(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        assert (await client.request(Get(), os.urandom(24), q.rsecret)).code == ErrorCode.NO_QUEUE
        assert (await client.request(Send(body=b"x"), os.urandom(24), q.ssecret)).code == ErrorCode.NO_QUEUE
        # A recipient id is not a sender id and vice versa.
        assert (await client.request(Send(body=b"x"), q.rid, q.ssecret)).code == ErrorCode.NO_QUEUE
        assert (await client.request(Get(), q.snd, q.rsecret)).code == ErrorCode.NO_QUEUE
    finally:
        await client.close()


async def test_oversize_body(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        q = await new_queue(client, node=shared_node)
        assert (await client.request(Send(body=b"x" * (MAX_BODY + 1)), q.snd, q.ssecret)).code == ErrorCode.LARGE
        assert isinstance(await client.request(Send(body=b"x" * MAX_BODY), q.snd, q.ssecret), Ok)
        got = await client.request(Get(), q.rid, q.rsecret)
        assert len(got.box) > MAX_BODY
    finally:
        await client.close()


async def test_flood_is_throttled(node_factory):
    node = node_factory("throttled", throttle={"rate": 20, "burst": 50})
    client = await RawClient.connect(node.address)
    try:
        built = [client.build(Ping()) for _ in range(32 * 10)]
        for start in range(0, len(built), 32):
            await client.send_packed(*[p for _, p in built[start : start + 32]])
        answers = [await client.answer(corr) for corr, _ in built]
        throttled = [a for a in answers if isinstance(a, Error)]
        assert all(a.code == ErrorCode.THROTTLED for a in throttled)
        assert 200 <= len(throttled) <= 320 - 50
        assert isinstance(answers[0], Pong)
        await asyncio.sleep(0.5)  # tokens come back
        assert isinstance(await client.request(Ping()), Pong)
    finally:
        await client.close()
    await still_alive(node)


async def test_long_error_details_are_cut_to_the_protocol_limit(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        corr = client.session.next_corr()
        body = {"sess": client.session.session_id, "corr": corr, "q": None, "cmd": "PING"}
        body.update({"unknown_field_with_a_long_name_%02d" % i: 1 for i in range(20)})
        await client.send_packed(packb([b"", packb(body)]))
        answer = await client.answer(corr)  # decoding would fail on a detail over 200 characters
        assert answer.code == ErrorCode.SYNTAX and len(answer.detail) <= 200
        assert isinstance(await client.request(Ping()), Pong)
    finally:
        await client.close()


async def test_envelope_with_low_order_key_is_envelope_error(shared_node):
    client = await RawClient.connect(shared_node.address)
    try:
        for epk in (bytes(32), b"\x01" + bytes(31)):
            envelope = packb({"epk": epk, "box": os.urandom(200)})
            answer = await client.request(Forward(node=str(shared_node.address), env=envelope))
            assert isinstance(answer, Error) and answer.code == ErrorCode.ENVELOPE
            answer = await client.request(RelayForward(env=envelope))
            assert isinstance(answer, Error) and answer.code == ErrorCode.ENVELOPE
        assert isinstance(await client.request(Ping()), Pong)
    finally:
        await client.close()


async def test_a_link_matches_the_answer_to_an_unreadable_corr_by_order(shared_node, monkeypatch):
    """Item 1: RelayLink does not hang on a command whose corr the node could not read."""
    from onionpost.proto import session as session_module
    from onionpost.transport import RelayLink

    link = await RelayLink.connect(shared_node.address)
    try:
        encode = session_module.encode_body
        calls = []

        def first_with_a_short_corr(sess, corr, queue, command):
            calls.append(corr)
            return encode(sess, corr[:23] if len(calls) == 1 else corr, queue, command)

        monkeypatch.setattr(session_module, "encode_body", first_with_a_short_corr)
        first, second = await link.request_many([(Ping(), None, None), (Ping(), None, None)], timeout=10)
        assert isinstance(first, Error) and first.code == ErrorCode.SYNTAX and isinstance(second, Pong)
    finally:
        await link.close()


async def test_the_spec_s_former_open_cases_get_their_exact_errors(shared_node):
    """Item 11: signed unsigned commands, a PING with a body, wrong-length signatures, all-zero keys."""
    from onionpost.proto import New, crypto

    client = await RawClient.connect(shared_node.address)
    try:
        _, secret = crypto.signing_keypair()
        signed_ping = await client.request(Ping(), None, secret)
        assert signed_ping.code == ErrorCode.AUTH and signed_ping.detail == "PING must be unsigned"
        envelope = packb({"epk": os.urandom(32), "box": b""})
        assert (await client.request(Forward(node=str(shared_node.address), env=envelope), None, secret)).code == ErrorCode.AUTH
        assert (await client.request(RelayForward(env=envelope), None, secret)).code == ErrorCode.AUTH

        def raw(signature: bytes, **fields) -> tuple[bytes, bytes]:
            corr = client.session.next_corr()
            body = packb({"sess": client.session.session_id, "corr": corr, "q": None, "cmd": "PING", **fields})
            return corr, packb([signature, body])

        for signature, fields, detail in (
            (b"", {"body": b"x"}, "unknown field"),
            (b"s" * 63, {}, "signature must be 0 or 64 bytes"),
            (b"s" * 65, {}, "signature must be 0 or 64 bytes"),
        ):
            corr, packed = raw(signature, **fields)
            await client.send_packed(packed)
            answer = await client.answer(corr)
            assert answer.code == ErrorCode.SYNTAX and detail in answer.detail, answer

        dh_public = crypto.dh_keypair()[0]
        zero = await client.request(New(rkey=bytes(32), dhkey=dh_public), None, None)
        assert zero.code == ErrorCode.SYNTAX and "rkey" in zero.detail
        rkey, rsecret = crypto.signing_keypair()
        assert (await client.request(New(rkey=rkey, dhkey=bytes(32)), None, rsecret)).code == ErrorCode.SYNTAX
        assert isinstance(await client.request(Ping()), Pong)
    finally:
        await client.close()
