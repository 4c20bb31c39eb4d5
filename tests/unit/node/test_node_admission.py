"""The connection gate's rules, without sockets: request heads, budgets, refusals, counted logs."""

import asyncio
import logging

import errno
import socket

from onionpost.node.admission import BAD_REQUEST, REFUSED, Admission, Gate, descriptor_budget, valid_head
from onionpost.node.config import Connections
from onionpost.node.tally import Tally

UPGRADE = (
    b"GET /onionpost HTTP/1.1\r\nHost: abc.onion:80\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
)


def test_valid_head():
    assert valid_head(UPGRADE)
    assert valid_head(b"GET /onionpost HTTP/1.1\r\nHost: x\r\nX-Empty:")
    for bad in (
        b"GET / HTTP/1.1\r\nHost: x",
        b"GET /onionpost HTTP/1.0\r\nHost: x",
        b"get /onionpost HTTP/1.1\r\nHost: x",
        b"GET /onionpost HTTP/1.1",  # no Host
        b"GET /onionpost HTTP/1.1\r\nHost: x\r\nHost: y",
        b"GET /onionpost HTTP/1.1\r\nHost: x\r\nContent-Length: 3",
        b"GET /onionpost HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
        b"GET /onionpost HTTP/1.1\r\nHost: x\r\nBad Header",
        b"GET /onionpost HTTP/1.1\r\nHost: x\r\n folded",
        b"GET /onionpost HTTP/1.1\r\nHost: \x00",
        b"GET /onionpost HTTP/1.1\r\nHost: \xc3\xa9",
    ):
        assert not valid_head(bad), bad


def test_descriptor_budget_leaves_room_for_the_node():
    for limit in (64, 256, 1024, 4096, 20000, 1 << 20):
        assert descriptor_budget(limit) + 20 < limit, limit
    assert descriptor_budget(64) == 40 and descriptor_budget(1024) == 896


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = self.aborted = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def is_closing(self):
        return self.closed or self.aborted


class FakeHandler:
    def __init__(self):
        self.received = b""
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += data

    def connection_lost(self, exc):
        self.lost = True


def admission(**settings) -> tuple[Admission, list[FakeHandler]]:
    handlers: list[FakeHandler] = []

    def make():
        handlers.append(FakeHandler())
        return handlers[-1]

    return Admission(make, Connections(**settings), 1024, Tally(), clock=lambda: 0.0), handlers


def connect(gates: Admission):
    """What ``Admission._accept`` does for one socket, without sockets: (Gate, transport) or (None, refusal)."""
    reason = gates._refusal()
    if reason is not None:
        gates.tally.count(reason)
        refused = FakeTransport()
        refused.write(REFUSED)
        refused.close()
        return None, refused
    gates._starting += 1
    gates.pending += 1
    gate = Gate(gates)
    transport = FakeTransport()
    gate.connection_made(transport)
    return gate, transport


async def test_limits_refuse_with_a_fixed_503_and_count():
    gates, _ = admission(max=3, max_pending=2, rate=1, burst=100)
    first, _ = connect(gates)
    second, second_transport = connect(gates)
    _, refused = connect(gates)
    assert refused.written == REFUSED and refused.closed and gates.tally["connections refused (handshakes in progress)"] == 1
    gates.established(second_transport)
    assert gates.pending == 1
    connect(gates)
    _, over = connect(gates)
    assert over.written == REFUSED and gates.tally["connections refused (connection limit)"] == 1
    second.connection_lost(None)
    assert gates.open == 2 and gates.pending == 2
    gates.close()


async def test_rate_limit():
    gates, _ = admission(rate=1, burst=2)
    results = [connect(gates)[1].written for _ in range(3)]
    assert results == [b"", b"", REFUSED] and gates.tally["connections refused (rate)"] == 1


async def test_gate_passes_a_valid_head_unchanged_and_refuses_others():
    gates, handlers = admission()
    gate, transport = connect(gates)
    assert isinstance(gate, Gate)
    gate.data_received(UPGRADE[:30])
    assert not handlers
    gate.data_received(UPGRADE[30:] + b"\r\n\r\n" + b"\x81\x00")
    assert handlers[0].received == UPGRADE + b"\r\n\r\n\x81\x00" and transport.written == b""
    gate.data_received(b"more")
    assert handlers[0].received.endswith(b"more")
    gate.connection_lost(None)
    assert handlers[0].lost and gates.open == 0
    bad, bad_transport = connect(gates)
    bad.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert bad_transport.written == BAD_REQUEST and bad_transport.closed
    huge, huge_transport = connect(gates)
    huge.data_received(b"x" * 9000)
    assert huge_transport.written == BAD_REQUEST


async def test_head_deadline():
    gates, _ = admission(handshake_timeout=0.05)
    gate, transport = connect(gates)
    for _ in range(100):
        if transport.aborted:
            break
        await asyncio.sleep(0.01)
    assert transport.aborted and gates.tally["connections closed (no upgrade in time)"] == 1


class OutOfDescriptors:
    def __init__(self, listener):
        self.listener = listener
        self.calls = 0

    def accept(self):
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def fileno(self):
        return self.listener.fileno()


async def test_accept_out_of_descriptors_pauses_and_is_counted_and_logged_once_per_interval(caplog):
    gates, _ = admission()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        gates.start(listener)
        failing = OutOfDescriptors(listener)
        gates._sock = failing
        for _ in range(1000):
            gates._accept()
        assert failing.calls == 1000  # one try per turn: accepting stops until the retry delay
        with caplog.at_level(logging.INFO):
            line = gates.tally.flush(60)
            assert gates.tally.flush(60) is None
        gates._sock = listener
        gates.close()
    assert line == "in the last 60 s: accept() failed (out of descriptors): 1000"
    assert [r.getMessage() for r in caplog.records] == [line]
