"""Reaching .onion nodes through Tor's SOCKS port, one circuit per isolation tag.

Tor's ``IsolateSOCKSAuth`` (on by default for a SocksPort) puts streams with
different SOCKS username/password pairs on different circuits. The client
passes one tag per one-directional queue, so no circuit (and no socket)
carries two queues. Loopback nodes are reached directly (local development).

When Tor cannot reach an onion, the connector calls ``on_unreachable`` (at
most once per ``REFRESH_INTERVAL``): the owner of the tor can then ask it for
fresh circuits and a clean onion cache (NEWNYM). Tor remembers an onion's
introduction points as failed for minutes after circuits through a dead
relay broke, even once the relay is gone from the consensus.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyTimeoutError, ProxyType

from onionpost.proto import NodeAddress
from onionpost.torconfig.socks import isolation_credentials

from .connector import ANONYMOUS, DirectConnector, open_websocket


REFRESH_INTERVAL = 20.0
"""Least seconds between two ``on_unreachable`` calls (tor itself rate-limits NEWNYM to one per 10 s)."""

log = logging.getLogger(__name__)


class TorConnector:
    def __init__(
        self,
        socks_host: str = "127.0.0.1",
        socks_port: int = 9050,
        timeout: float = 60.0,
        *,
        on_unreachable: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.socks_host, self.socks_port, self.timeout = socks_host, socks_port, timeout
        self.on_unreachable = on_unreachable
        self.refreshes = 0
        """How many times ``on_unreachable`` was called."""
        self._clock = clock
        self._last_refresh: float | None = None
        self._direct = DirectConnector(timeout)

    async def open(self, address: NodeAddress, isolation: str = ""):
        if address.is_loopback:
            return await self._direct.open(address, isolation)
        username, password = isolation_credentials(isolation or "default")
        connector = ProxyConnector(
            proxy_type=ProxyType.SOCKS5,
            host=self.socks_host,
            port=self.socks_port,
            username=username,
            password=password,
            rdns=True,  # the onion name goes to Tor; nothing is resolved locally
        )
        session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout), skip_auto_headers=ANONYMOUS
        )
        try:
            return await open_websocket(session, address.host, address.port)
        except (ProxyError, ProxyConnectionError, ProxyTimeoutError, asyncio.TimeoutError) as exc:
            # e.g. tor's "Host unreachable", or no circuit in time: the onion is not reachable now
            await self._refresh()
            raise ConnectionError(f"Tor could not reach {address.host}: {exc or 'timed out'}") from None

    async def _refresh(self) -> None:
        now = self._clock()
        if self.on_unreachable is None or (self._last_refresh is not None and now - self._last_refresh < REFRESH_INTERVAL):
            return
        self._last_refresh = now
        self.refreshes += 1
        try:
            await self.on_unreachable()
        except Exception as exc:  # noqa: BLE001 - a failed refresh must not hide the connection error
            log.warning("could not ask tor for fresh circuits: %s", exc)
