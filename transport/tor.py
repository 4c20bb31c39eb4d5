"""Reaching .onion nodes through Tor's SOCKS port, one circuit per isolation tag.

Tor's ``IsolateSOCKSAuth`` (on by default for a SocksPort) puts streams with
different SOCKS username/password pairs on different circuits. The client
passes one tag per one-directional queue, so no circuit (and no socket)
carries two queues. Loopback nodes are reached directly (local development).
"""

import aiohttp
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyTimeoutError, ProxyType

from onionproto import NodeAddress
from torconfig.socks import isolation_credentials

from .connector import DirectConnector, open_websocket


class TorConnector:
    def __init__(self, socks_host: str = "127.0.0.1", socks_port: int = 9050, timeout: float = 60.0):
        self.socks_host, self.socks_port, self.timeout = socks_host, socks_port, timeout
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
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout))
        try:
            return await open_websocket(session, address.host, address.port)
        except (ProxyError, ProxyConnectionError, ProxyTimeoutError) as exc:  # e.g. tor's "Host unreachable": the onion is not reachable now
            raise ConnectionError(f"Tor could not reach {address.host}: {exc}") from None
