"""Connectors: how a WebSocket to a node is opened.

``DirectConnector`` reaches loopback nodes only. The Tor connector (SOCKS,
one circuit per isolation tag) lives beside it and has the same shape.
"""

import socket
from typing import Protocol

import aiohttp

from onionpost.proto import BLOCK_SIZE, NodeAddress

WEBSOCKET_PATH = "/onionpost"
"""HTTP path of the relay WebSocket (docs/protocol/relay.md, "Transport")."""

MAX_MESSAGE = BLOCK_SIZE
ANONYMOUS = ("User-Agent",)
"""Headers aiohttp would add that name the software (relay.md "Transport": requests name nothing)."""


class Connector(Protocol):
    async def open(self, address: NodeAddress, isolation: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
        """Open a WebSocket to ``address``. ``isolation`` names the circuit to use (Tor only)."""


def set_nodelay(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Disable Nagle: 16 KB blocks and small acks must not wait for delayed ACKs."""
    sock = ws.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_websocket(session: aiohttp.ClientSession, host: str, port: int):
    """Open the relay WebSocket on ``session``; close the session if that fails. Returns (session, ws)."""
    host = f"[{host}]" if ":" in host else host
    try:
        ws = await session.ws_connect(
            f"http://{host}:{port}{WEBSOCKET_PATH}",
            # +1: aiohttp 3.14 refuses a message whose size equals max_msg_size; RelayLink checks the exact size.
            max_msg_size=MAX_MESSAGE + 1,
            autoping=True,
            heartbeat=None,
        )
    except BaseException:
        await session.close()
        raise
    set_nodelay(ws)
    return session, ws


class DirectConnector:
    """Connects straight to loopback nodes; refuses .onion (that needs Tor)."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout

    async def open(self, address: NodeAddress, isolation: str = ""):
        if address.is_onion:
            raise ConnectionError(f"{address.host} is an onion address: Tor is needed to reach it")
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout), skip_auto_headers=ANONYMOUS
        )
        return await open_websocket(session, address.host, address.port)
