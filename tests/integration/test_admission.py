"""Connections before their session: deadlines, limits, refusals, and what the node logs (issue 12, items 7, 9, 10)."""

import asyncio
import json
import re
import resource
import socket
import struct
import time

import pytest

from onionpost.proto import ErrorCode, Ok, Ping, Pong, Send, Subscribe
from tests.integration.relay_helpers import RawClient, new_queue, wait_for
from tests.integration.test_bad_input import plain_error_after_hello

pytestmark = pytest.mark.timeout(90)

UPGRADE = (
    b"GET /onionpost HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def raw_connection(node) -> socket.socket:
    sock = socket.create_connection((node.address.host, node.address.port), timeout=10)
    sock.setblocking(False)
    return sock


async def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the node sends until it closes the connection (AssertionError if it does not in time)."""
    loop = asyncio.get_running_loop()
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the node kept the connection open; it sent {data[:200]!r}"
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        except ConnectionResetError:
            return data
        except asyncio.TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk


async def exchange(node, request: bytes) -> bytes:
    sock = raw_connection(node)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, request)
        return await read_until_closed(sock, 10)
    finally:
        sock.close()


def status_of(node) -> dict:
    return json.loads((node.data_dir / "status.json").read_text())


async def test_silent_and_slow_connections_are_closed_after_the_bound(node_factory):
    node = node_factory("silent", connections={"handshake_timeout": 1.5})
    silent = [raw_connection(node) for _ in range(5)]
    partial = raw_connection(node)
    await asyncio.get_running_loop().sock_sendall(partial, UPGRADE[:40])  # a head that never ends
    started = time.monotonic()
    try:
        for sock in [*silent, partial]:
            assert await read_until_closed(sock, 10) == b""
        elapsed = time.monotonic() - started
        assert 1.0 < elapsed < 8, elapsed
    finally:
        for sock in [*silent, partial]:
            sock.close()


async def test_upgraded_connection_without_client_hello_gets_handshake_error(node_factory):
    node = node_factory("nohello", connections={"handshake_timeout": 1.5})
    client = await RawClient.connect(node.address, handshake=False)
    try:
        started = time.monotonic()
        assert await plain_error_after_hello(client) == ErrorCode.HANDSHAKE  # the node hello, then no client hello
        assert time.monotonic() - started < 8
    finally:
        await client.close()


async def test_early_closes_and_bad_requests_leave_no_traceback_and_no_server_name(node_factory):
    """Every answer a client can get before its session: no Server header, no software name (items 7, 9)."""
    node = node_factory("http")
    loop = asyncio.get_running_loop()
    for _ in range(10):  # the upgrade, then gone before the answer: FIN, then RST
        for reset in (False, True):
            sock = raw_connection(node)
            await loop.sock_sendall(sock, UPGRADE)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    answers = [
        await exchange(node, request)
        for request in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /onionpost HTTP/1.1\r\nHost: x\r\n\r\n",  # not an upgrade: the node's own 400
            b"POST /onionpost HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /onionpost HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET /onionpost HTTP/1.1\r\n\r\n",
            b"FOO / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            b"x" * 20000,
        )
    ]
    sock = raw_connection(node)
    try:
        await loop.sock_sendall(sock, UPGRADE)
        upgrade = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
    finally:
        sock.close()
    assert upgrade.startswith(b"HTTP/1.1 101 ")
    for answer in [*answers, upgrade]:
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 101 ")), answer[:100]
        assert b"\r\nserver:" not in head, head
        for name in (b"aiohttp", b"python", b"llhttp"):
            assert name not in answer.lower(), answer
    assert isinstance(await ping(node), Pong)
    # The fixture checks at the end that the log has no traceback.


async def ping(node):
    client = await RawClient.connect(node.address)
    try:
        return await client.request(Ping())
    finally:
        await client.close()


def limit_descriptors(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@pytest.mark.timeout(120)
async def test_at_the_descriptor_limit_the_node_refuses_clearly_and_keeps_serving(node_factory):
    """RLIMIT_NOFILE 64 (soft and hard), 150 connections, and a configured limit the descriptors cannot hold
    (which the node lowers). The subscribed client keeps getting messages, new connections get a 503,
    status.json counts what is open, and the refusals are one log line per interval.
    """
    connections = {"handshake_timeout": 60, "max": 1000, "max_pending": 1000, "rate": 10000, "burst": 10000}
    node = node_factory("fds", start=False, connections=connections, log_interval=1.0)
    node.start(preexec_fn=limit_descriptors(64))
    recipient = await RawClient.connect(node.address)
    sender = await RawClient.connect(node.address)
    held: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    try:
        q = await new_queue(recipient, node=node)
        assert isinstance(await recipient.request(Subscribe(), q.rid, q.rsecret), Ok)
        started = time.monotonic()
        for _ in range(150):
            held.append(raw_connection(node))
        answers = await asyncio.gather(*(poll(sock) for sock in held))
        refused = sum(1 for a in answers if a is not None)
        assert all(a in (None, b"refused") for a in answers), set(answers)
        assert 10 < len(held) - refused < 64 and refused > 80, (len(held), refused)
        # The subscribed client is still served, through the session that was open before the flood.
        assert isinstance(await sender.request(Send(body=b"through the flood"), q.snd, q.ssecret), Ok)
        push = await recipient.push(timeout=15)
        assert push.queue == q.rid and push.response.mid
        open_now = 2 + sum(1 for a in answers if a is None)
        await wait_for(lambda: status_of(node).get("connections") == open_now, timeout=10)
        assert status_of(node)["sessions"] == 2 and status_of(node)["subscriptions"] == 1
        await wait_for(lambda: "connections refused" in node.log_text(), 10)
        await asyncio.sleep(2.5)
        elapsed = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()
        await sender.close()
        await recipient.close()
    lines = [line for line in node.log_text().splitlines() if "in the last" in line]
    assert lines and len(lines) <= elapsed / 1.0 + 2, lines
    counted = sum(int(n) for line in lines for n in re.findall(r"connections refused \(connection limit\): (\d+)", line))
    assert counted == refused, lines
    assert "lowered to" in node.log_text() and "accept() failed" not in node.log_text()
    assert len(node.log_text()) < 20000, node.log_text()[-2000:]


async def poll(sock: socket.socket) -> bytes | None:
    """b"refused" if the node answered 503 and closed, None if it holds the connection (nothing within 1 s)."""
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 1.0)
    except asyncio.TimeoutError:
        return None
    except ConnectionResetError:
        return b"reset"
    if data.startswith(b"HTTP/1.1 503 "):
        return b"refused"
    return data[:60]


async def test_requests_to_other_nodes_name_no_software():
    """A forwarding node (or a client) opening a session sends no User-Agent naming aiohttp or Python (item 9)."""
    from onionpost.proto import NodeAddress
    from onionpost.transport import DirectConnector

    heads: list[bytes] = []

    async def record(reader, writer):
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Exception):
            await DirectConnector(timeout=5).open(NodeAddress(b"\0" * 32, "127.0.0.1", port))
    finally:
        server.close()
    assert heads and heads[0].startswith(b"GET /onionpost HTTP/1.1\r\n")
    for name in (b"aiohttp", b"python", b"user-agent"):
        assert name not in heads[0].lower(), heads[0]
