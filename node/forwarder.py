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
    ):
        self.connector = connector or DirectConnector()
        self.tally = tally or Tally()
        self.loopback = loopback
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
            return link
        arrived = time.monotonic()
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
            self._links[address] = link
            return link

    @property
    def link_count(self) -> int:
        return sum(1 for link in self._links.values() if link.is_open)

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
