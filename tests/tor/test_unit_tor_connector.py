"""TorConnector's reaction to unreachable onions (no tor needed: the SOCKS port refuses)."""

import socket

import pytest

from onionpost.proto import NodeAddress
from onionpost.transport.tor import REFRESH_INTERVAL, TorConnector

ONION = NodeAddress(bytes(32), "a" * 56 + ".onion", 80)


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.timeout(30)
async def test_unreachable_onions_ask_for_fresh_circuits_at_most_once_per_interval():
    calls = []

    async def refresh():
        calls.append(clock.now)

    clock = Clock()
    connector = TorConnector("127.0.0.1", refused_port(), timeout=5, on_unreachable=refresh, clock=clock)
    for _ in range(3):
        with pytest.raises(ConnectionError, match="Tor could not reach"):
            await connector.open(ONION, "queue-1")
    assert calls == [1000.0]
    clock.now += REFRESH_INTERVAL
    with pytest.raises(ConnectionError):
        await connector.open(ONION, "queue-2")
    assert calls == [1000.0, 1000.0 + REFRESH_INTERVAL]
    assert connector.refreshes == 2


@pytest.mark.timeout(30)
async def test_a_failing_refresh_does_not_hide_the_connection_error(caplog):
    async def refresh():
        raise OSError("control port closed")

    connector = TorConnector("127.0.0.1", refused_port(), timeout=5, on_unreachable=refresh)
    with pytest.raises(ConnectionError, match="Tor could not reach"):
        await connector.open(ONION, "queue-1")
    assert "could not ask tor for fresh circuits: control port closed" in caplog.text


@pytest.mark.timeout(30)
async def test_loopback_nodes_never_trigger_a_refresh():
    calls = []

    async def refresh():
        calls.append(1)

    connector = TorConnector("127.0.0.1", refused_port(), timeout=5, on_unreachable=refresh)
    with pytest.raises(OSError):
        await connector.open(NodeAddress(bytes(32), "127.0.0.1", refused_port()), "queue-1")
    assert calls == []
