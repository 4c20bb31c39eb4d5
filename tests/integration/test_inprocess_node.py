"""An in-process node (aiohttp runner on 127.0.0.1:0) with an injected clock and store, real WebSocket clients."""

import asyncio
import logging
import os
import time
import tracemalloc

import pytest
from aiohttp import web

from onionpost.node.config import NodeConfig
from onionpost.node.datadir import Identity
from onionpost.node.server import NODE_KEY, make_app
from onionpost.node.sqlite_store import SQLiteQueueStore, read_counts
from onionpost.proto import (
    BLOCK_SIZE, Ack, Delete, Error, ErrorCode, Forward, Get, Message, NodeAddress, NoMessage, Ok, Ping, Pong, Send, Subscribe,
)
from onionpost.proto import delivery, forward
from tests.integration.relay_helpers import RawClient, id_forms, new_queue
from onionpost.transport import DirectConnector

pytestmark = pytest.mark.timeout(60)

TTL = 3600


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyStore(SQLiteQueueStore):
    """Fails ``add_message`` after it wrote, when asked: the savepoint must undo it."""

    fail = False

    def add_message(self, rid, mid, ts, box):
        super().add_message(rid, mid, ts, box)
        if self.fail:
            raise RuntimeError("disk on fire")


@pytest.fixture
async def start_node(tmp_path):
    runners = []

    async def start(clock, **config):
        identity = Identity.from_seed(os.urandom(32))
        store = FlakyStore(tmp_path / "node.db")
        app = make_app(NodeConfig(**config), identity, store, clock=clock)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        return NodeAddress(identity.public, "127.0.0.1", port), app[NODE_KEY], store

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_messages_expire_after_ttl(start_node, tmp_path):
    clock = FakeClock()
    address, node, _ = await start_node(clock, ttl=TTL, quota=2)
    client = await RawClient.connect(address)
    try:
        q = await new_queue(client)
        assert isinstance(await client.request(Send(body=b"old"), q.snd, q.ssecret), Ok)
        clock.now += TTL / 2
        assert isinstance(await client.request(Send(body=b"newer"), q.snd, q.ssecret), Ok)
        assert (await client.request(Send(body=b"full"), q.snd, q.ssecret)).code == ErrorCode.QUOTA
        clock.now += TTL / 2 + 1  # "old" is now older than the TTL: filtered on access
        got = await client.request(Get(), q.rid, q.rsecret)
        assert delivery.open_message(q.queue_key, got.box)[1] == b"newer"
        assert isinstance(await client.request(Send(body=b"room"), q.snd, q.ssecret), Ok)  # expired ones do not count
        assert read_counts(tmp_path / "node.db") == (1, 3)
        assert await node.sweep() == 1
        assert read_counts(tmp_path / "node.db") == (1, 2)
        clock.now += TTL + 1
        assert isinstance(await client.request(Get(), q.rid, q.rsecret), NoMessage)
        assert await node.sweep() == 2
        assert read_counts(tmp_path / "node.db") == (1, 0)
    finally:
        await client.close()


async def test_expired_in_flight_message_moves_the_subscription_on(start_node):
    clock = FakeClock()
    address, _, _ = await start_node(clock, ttl=TTL)
    client = await RawClient.connect(address)
    try:
        q = await new_queue(client)
        assert isinstance(await client.request(Send(body=b"will expire"), q.snd, q.ssecret), Ok)
        assert isinstance(await client.request(Subscribe(), q.rid, q.rsecret), Ok)
        first = (await client.push()).response
        clock.now += TTL + 1
        assert isinstance(await client.request(Send(body=b"fresh"), q.snd, q.ssecret), Ok)
        assert not client.pushes  # one already in flight
        assert (await client.request(Ack(mid=first.mid), q.rid, q.rsecret)).code == ErrorCode.NO_MSG
        fresh = (await client.push()).response
        assert isinstance(fresh, Message) and delivery.open_message(q.queue_key, fresh.box)[1] == b"fresh"
    finally:
        await client.close()


async def test_failing_store_answers_internal_and_applies_nothing(start_node, tmp_path, caplog):
    caplog.set_level(logging.DEBUG - 1, logger="node")
    address, _, store = await start_node(FakeClock(), unsecured_limit=1)
    client = await RawClient.connect(address)
    try:
        q = await new_queue(client, secure=False)
        store.fail = True
        answer = await client.request(Send(body=b"lost"), q.snd, None)
        assert isinstance(answer, Error) and answer.code == ErrorCode.INTERNAL
        assert "fire" not in (answer.detail or "")
        assert read_counts(tmp_path / "node.db") == (1, 0)
        store.fail = False
        # The failed unsigned send was not counted against the limit of 1.
        assert isinstance(await client.request(Send(body=b"kept"), q.snd, None), Ok)
        assert (await client.request(Send(body=b"over"), q.snd, None)).code == ErrorCode.LIMIT
        got = await client.request(Get(), q.rid, q.rsecret)
        assert delivery.open_message(q.queue_key, got.box)[1] == b"kept"
    finally:
        await client.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "RuntimeError" in logged
    for qid in (q.rid, q.snd):
        for form in id_forms(qid):
            assert form not in logged


class CountingConnector(DirectConnector):
    def __init__(self):
        super().__init__()
        self.opened = 0

    async def open(self, address, isolation=""):
        self.opened += 1
        return await super().open(address, isolation)


async def test_forwarding_shares_one_link_per_destination(tmp_path):
    runners = []
    try:
        addresses = []
        connector = CountingConnector()
        for name in ("a", "b"):
            identity = Identity.from_seed(os.urandom(32))
            store = SQLiteQueueStore(tmp_path / f"{name}.db")
            app = make_app(NodeConfig(), identity, store, connector=connector)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            addresses.append(NodeAddress(identity.public, "127.0.0.1", runner.addresses[0][1]))
        a, b = addresses
        recipient = await RawClient.connect(b)
        clients = [await RawClient.connect(a) for _ in range(3)]
        try:
            q = await new_queue(recipient)
            for i, client in enumerate(clients):
                envelope, key = forward.seal_send(b.key, q.snd, Send(body=b"%d" % i), q.ssecret, int(time.time()))
                answer = await client.request(Forward(node=str(b), env=envelope))
                assert isinstance(forward.open_response(key, answer.env), Ok)
            assert connector.opened == 1
        finally:
            for client in [recipient, *clients]:
                await client.close()
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_deleted_queue_leaves_no_bytes_after_the_purge(start_node, tmp_path):
    address, node, _ = await start_node(FakeClock())
    client = await RawClient.connect(address)
    try:
        q = await new_queue(client)
        for i in range(5):
            assert isinstance(await client.request(Send(body=b"secret %d" % i), q.snd, q.ssecret), Ok)
        got = await client.request(Get(), q.rid, q.rsecret)
        assert isinstance(await client.request(Delete(), q.rid, q.rsecret), Ok)
    finally:
        await client.close()
    await node.purge()
    assert (tmp_path / "node.db-wal").stat().st_size == 0
    data = (tmp_path / "node.db").read_bytes()
    for secret in (q.rid, q.snd, q.queue_key, q.rkey, q.skey, got.box[24:]):
        assert secret not in data


async def test_idle_sessions_keep_no_blocks(start_node):
    """An idle session holds no writer task and no reference to the last block it read or wrote."""
    address, node, _ = await start_node(FakeClock())
    server_side = [tracemalloc.Filter(True, "*/node/*", all_frames=True), tracemalloc.Filter(True, "*/aiohttp/web_*", all_frames=True)]
    tracemalloc.start(30)
    clients = []
    try:
        for _ in range(10):
            client = await RawClient.connect(address)
            assert isinstance(await client.request(Ping()), Pong)
            clients.append(client)
        await asyncio.sleep(0.2)
        held = tracemalloc.take_snapshot().filter_traces(server_side)
        blocks = [trace for trace in held.traces if trace.size >= BLOCK_SIZE]
        assert all(conn._writer is None for conn in node.connections)
        assert len(blocks) < len(clients), [trace.traceback.format()[-4:] for trace in blocks[:2]]
    finally:
        tracemalloc.stop()
        for client in clients:
            await client.close()


async def test_an_onion_node_refuses_loopback_destinations_like_any_unreachable_node(tmp_path, shared_node):
    """Item 4: FWD to a loopback port (open: a node; or closed) from an onion node opens no connection
    and answers exactly what an unreachable destination gets, so it cannot probe the host's services."""
    from onionpost.node.config import OnionConfig
    from onionpost.node.datadir import free_port

    connector = CountingConnector()
    identity = Identity.from_seed(os.urandom(32))
    app = make_app(NodeConfig(onion=OnionConfig()), identity, SQLiteQueueStore(tmp_path / "onion.db"), connector=connector)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        client = await RawClient.connect(NodeAddress(identity.public, "127.0.0.1", runner.addresses[0][1]))
        try:
            answers, seconds = [], []
            for port in (shared_node.address.port, free_port("127.0.0.1"), 22):
                destination = NodeAddress(shared_node.address.key, "127.0.0.1", port)
                envelope, _ = forward.seal_send(destination.key, os.urandom(24), Send(body=b"probe"), None, int(time.time()))
                started = time.perf_counter()
                answers.append(await client.request(Forward(node=str(destination), env=envelope)))
                seconds.append(time.perf_counter() - started)
            unreachable = Error(ErrorCode.UNREACHABLE.value, "the destination node cannot be reached")
            assert answers == [unreachable] * 3
            assert connector.opened == 0  # nothing was tried, so the answer cannot depend on the port
            print("FWD to loopback from an onion node, open / closed / ssh port:", ", ".join(f"{s * 1000:.1f} ms" for s in seconds))
        finally:
            await client.close()
    finally:
        await runner.cleanup()


async def test_the_node_rewrites_its_database_after_writes(start_node):
    """Item 8: every rewrite_interval, if anything was written, the file is rebuilt in key order."""
    address, node, _ = await start_node(FakeClock(), rewrite_interval=0.2)
    client = await RawClient.connect(address)
    try:
        await new_queue(client)
        deadline = time.monotonic() + 10
        while node.tally["database rewrites"] < 1:
            assert time.monotonic() < deadline, "no rewrite"
            await asyncio.sleep(0.05)
        rewrites = node.tally["database rewrites"]
        await asyncio.sleep(0.6)  # nothing written since: no more rewrites
        assert node.tally["database rewrites"] == rewrites
        assert isinstance(await client.request(Ping()), Pong)
    finally:
        await client.close()


async def test_a_send_token_is_forgotten_after_its_time(start_node, tmp_path):
    """Item 13: tokens are kept TOKEN_TTL seconds (then swept); a retry after that is a new message."""
    from onionpost.node.mailbox import TOKEN_TTL
    from onionpost.proto import crypto

    clock = FakeClock()
    address, node, _ = await start_node(clock)
    client = await RawClient.connect(address)
    try:
        q = await new_queue(client)
        send = Send(b"late retry", tok=crypto.send_token(b"late retry", q.ssecret))
        assert isinstance(await client.request(send, q.snd, q.ssecret), Ok)
        clock.now += TOKEN_TTL - 61
        assert isinstance(await client.request(send, q.snd, q.ssecret), Ok)
        assert read_counts(tmp_path / "node.db") == (1, 1)
        clock.now += 122
        await node.sweep()
        assert isinstance(await client.request(send, q.snd, q.ssecret), Ok)
        assert read_counts(tmp_path / "node.db") == (1, 2)
    finally:
        await client.close()


async def test_forwarding_links_are_bounded(tmp_path):
    """Each link holds a descriptor: beyond max_links, the least recently used one is closed."""
    from onionpost.node.forwarder import Forwarder
    from onionpost.proto import ForwardResult

    runners, addresses = [], []
    try:
        for name in ("a", "b", "c"):
            identity = Identity.from_seed(os.urandom(32))
            app = make_app(NodeConfig(), identity, SQLiteQueueStore(tmp_path / f"{name}.db"))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            addresses.append(NodeAddress(identity.public, "127.0.0.1", runner.addresses[0][1]))
        forwarder = Forwarder(max_links=2)
        for address in [*addresses, addresses[0]]:
            envelope, _ = forward.seal_send(address.key, os.urandom(24), Send(body=b"x"), None, int(time.time()))
            assert isinstance(await forwarder.forward(address, envelope), ForwardResult)  # (NO_QUEUE, sealed inside)
            assert forwarder.link_count <= 2
        assert set(forwarder._links) == {addresses[2], addresses[0]}
        await forwarder.close()
    finally:
        for runner in runners:
            await runner.cleanup()
