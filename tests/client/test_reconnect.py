"""One unreachable relay delays no other: every queue reopens its own link, concurrently."""

import asyncio

import pytest

from onionpost.client.network import Network, TrustedRelay
from onionpost.client.queues import OutboundQueue, new_sender_key
from onionpost.transport import DirectConnector, LinkClosed


class Gate:
    """A connector that holds every connection to ``blocked`` addresses until released, then refuses it."""

    def __init__(self):
        self.inner = DirectConnector()
        self.blocked: set[str] = set()
        self.release = asyncio.Event()
        self.attempts: dict[str, int] = {}

    async def open(self, address, isolation=""):
        where = f"{address.host}:{address.port}"
        self.attempts[where] = self.attempts.get(where, 0) + 1
        if where in self.blocked:
            await self.release.wait()
            raise ConnectionError(f"{where} is unreachable")
        return await self.inner.open(address, isolation)


@pytest.mark.timeout(60)
async def test_a_hanging_relay_does_not_hold_up_the_others(nodes):
    a, b = nodes("a"), nodes("b")
    relay_a, relay_b = TrustedRelay(str(a.address)), TrustedRelay(str(b.address))
    gate = Gate()
    network = Network([relay_a, relay_b], connector=gate, timeout=30)
    sender = Network([relay_a])
    try:
        queue_b = await network.create_queue(relay_b)
        queue_a = await network.create_queue(relay_a)
        await network.subscribe(queue_b)
        await network.subscribe(queue_a)
        for link in list(network._links.values()):  # noqa: SLF001 - both links drop (say, Tor died)
            await link.close()

        where_b = f"{b.address.host}:{b.address.port}"
        attempts_before = gate.attempts[where_b]
        gate.blocked.add(where_b)
        # Each queue's keeper reopens its own link (client/agent.py, Agent._keep): B's hangs, A's does not wait for it.
        reopening_b = asyncio.create_task(network.subscribe(queue_b))
        await asyncio.sleep(0)
        await asyncio.wait_for(network.subscribe(queue_a), 10)
        _, sender_secret = new_sender_key()
        await sender.send(OutboundQueue(relay_a.address, queue_a.snd, sender_secret), b"to queue A")
        delivery = await asyncio.wait_for(network.deliveries.get(), 10)
        assert (delivery.queue.rid, delivery.body) == (queue_a.rid, b"to queue A")
        assert not reopening_b.done()  # A's link came back while B's attempt still hangs

        gate.release.set()
        with pytest.raises(LinkClosed, match="unreachable"):
            await reopening_b
        assert gate.attempts[where_b] == attempts_before + 1
    finally:
        gate.release.set()
        await network.close()
        await sender.close()
