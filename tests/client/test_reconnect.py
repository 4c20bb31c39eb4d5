"""One unreachable relay delays no other: links reopen concurrently, with a per-relay backoff."""

import asyncio

import pytest

from onionpost.client.network import Network, TrustedRelay
from onionpost.client.queues import OutboundQueue, new_sender_key
from onionpost.transport import DirectConnector


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
        gate.blocked.add(where_b)
        resubscribing = asyncio.create_task(network.resubscribe())  # queue B comes first, and hangs
        _, sender_secret = new_sender_key()
        await sender.send(OutboundQueue(relay_a.address, queue_a.snd, sender_secret), b"to queue A")
        delivery = await asyncio.wait_for(network.deliveries.get(), 10)
        assert (delivery.queue.rid, delivery.body) == (queue_a.rid, b"to queue A")
        assert not resubscribing.done()  # A's link came back while B's attempt still hangs

        gate.release.set()
        errors = await resubscribing
        assert len(errors) == 1 and "unreachable" in str(errors[0])
        attempts = gate.attempts[where_b]
        assert await network.resubscribe() == []  # B is backing off: no new attempt yet
        assert gate.attempts[where_b] == attempts
        await asyncio.sleep(0.6)  # the first backoff step is 0.5 s
        assert len(await network.resubscribe()) == 1
        assert gate.attempts[where_b] == attempts + 1
    finally:
        gate.release.set()
        await network.close()
        await sender.close()
