"""FWD to other nodes: one pooled ``RelayLink`` per destination (relay.md "FWD", "Forwarding").

An onion node forwards only to onion destinations: a loopback destination
(meant for local development) is answered UNREACHABLE without connecting.

All clients of this node share the link to a destination, so the destination
learns only which node forwards, not which client. Links are reopened when
they close. The connector is injectable: ``DirectConnector`` for loopback
nodes, a Tor connector for .onion nodes.
"""

import asyncio
import logging
import time

from onionpost.proto import Error, ErrorCode, ForwardResult, NodeAddress, RelayForward, RelayForwardResult, Response
from onionpost.transport import Connector, DirectConnector, LinkClosed, RelayLink

from .tally import Tally

log = logging.getLogger(__name__)


UNREACHABLE_DETAILS = {
    None: "the destination node cannot be reached",
    ErrorCode.HANDSHAKE: "the destination node's hello is not signed by the key in its address",
    ErrorCode.VERSION: "the destination node speaks another protocol version",
}


MAX_LINKS = 64
"""Open links to destinations at most; beyond, the least recently used is closed (each holds a descriptor)."""
MAX_REMEMBERED = 1024
FAILURE_MEMORY = 60.0
"""Seconds a failed attempt is remembered, for the requests that waited on it."""


def unreachable(code: ErrorCode | None = None) -> Error:
    """relay.md "FWD": UNREACHABLE, saying why when the destination answered but its handshake failed."""
    return Error(ErrorCode.UNREACHABLE.value, UNREACHABLE_DETAILS.get(code, UNREACHABLE_DETAILS[None]))


class Forwarder:
    def __init__(
        self,
        connector: Connector | None = None,
        *,
        connect_timeout: float = 30.0,
        request_timeout: float = 60.0,
        tally: Tally | None = None,
        loopback: bool = True,
        max_links: int = MAX_LINKS,
    ):
        self.connector = connector or DirectConnector()
        self.tally = tally or Tally()
        self.loopback = loopback
        self.max_links = max_links
        """False: loopback destinations are refused as unreachable, without any connection (onion nodes)."""
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._links: dict[NodeAddress, RelayLink] = {}
        self._locks: dict[NodeAddress, asyncio.Lock] = {}
        self._failed_at: dict[NodeAddress, tuple[float, ErrorCode | None]] = {}

    async def forward(self, address: NodeAddress, envelope: bytes) -> Response:
        """Hand ``envelope`` to the node at ``address``.

        Returns:
            ``ForwardResult`` with the destination's sealed answer, the
            destination's ``Error``, or ``Error(UNREACHABLE)``.
        """
        if address.is_loopback and not self.loopback:
            # Reaching into the host's loopback would let anyone probe its local services (the answer
            # time differs for open and closed ports): the same answer as any unreachable node, at once.
            self.tally.count("forwards refused (loopback destination)")
            return unreachable()
        try:
            link = await self._link(address)
            [response] = await link.request_many([(RelayForward(env=envelope), None, None)], timeout=self.request_timeout)
        except (LinkClosed, OSError, asyncio.TimeoutError) as exc:
            self.tally.count("forwards failed (destination unreachable)")
            return unreachable(getattr(exc, "code", None))
        if isinstance(response, RelayForwardResult):
            return ForwardResult(env=response.env)
        if isinstance(response, Error):
            return response
        return Error(ErrorCode.UNREACHABLE.value, f"the destination node answered RFWD with {response.NAME}")

    async def _link(self, address: NodeAddress) -> RelayLink:
        link = self._links.get(address)
        if link is not None and link.is_open:
            self._links[address] = self._links.pop(address)  # most recently used last
            return link
        arrived = time.monotonic()
        self._forget_old(arrived)
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            link = self._links.get(address)
            if link is not None and link.is_open:
                return link
            failed = self._failed_at.get(address)
            if failed is not None and failed[0] >= arrived:
                # Those who waited on a failed attempt share its failure instead of each retrying in turn.
                raise LinkClosed("destination unreachable", failed[1])
            if link is not None:
                await link.close()
            try:
                link = await RelayLink.connect(
                    address, connector=self.connector, isolation=str(address), timeout=self.connect_timeout
                )
            except LinkClosed as exc:
                self._failed_at[address] = (time.monotonic(), exc.code)
                raise
            except Exception as exc:
                # A SOCKS refusal (tor: "Host unreachable" for an onion it cannot reach) comes
                # through as the SOCKS library's own error: the destination is unreachable all the same.
                self._failed_at[address] = (time.monotonic(), None)
                raise LinkClosed(f"destination unreachable ({type(exc).__name__})") from None
            self._links.pop(address, None)
            while len(self._links) >= self.max_links:  # each link holds a descriptor: close the least recently used
                await self._links.pop(next(iter(self._links))).close()
            self._links[address] = link
            return link

    def _forget_old(self, now: float) -> None:
        """Keep the bookkeeping of destinations bounded, however many a client names."""
        if len(self._failed_at) > MAX_REMEMBERED:
            self._failed_at = {a: f for a, f in self._failed_at.items() if now - f[0] < FAILURE_MEMORY}
        if len(self._locks) > MAX_REMEMBERED:
            self._locks = {a: lock for a, lock in self._locks.items() if lock.locked() or a in self._links}

    @property
    def link_count(self) -> int:
        return sum(1 for link in self._links.values() if link.is_open)

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
