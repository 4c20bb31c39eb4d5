"""SIGKILL the node while a client sends: every confirmed SEND survives, once, in order."""

import asyncio
import random

import pytest

from onionpost.proto import Ack, Get, NoMessage, Ok, Send
from onionpost.proto import delivery
from tests.integration.relay_helpers import new_queue
from onionpost.transport import LinkClosed, RelayLink

KILLS = 5
BATCH = 16


@pytest.mark.timeout(180)
async def test_confirmed_sends_survive_sigkill(node_factory, store_url):
    node = node_factory("crashy", quota=1_000_000, store=store_url)
    rng = random.Random(20240601)
    link = await RelayLink.connect(node.address)
    q = await new_queue(link, node=node)
    await link.close()

    confirmed: list[int] = []
    attempted = 0
    for _ in range(KILLS):
        link = await RelayLink.connect(node.address)
        killer = asyncio.get_running_loop().call_later(rng.uniform(0.1, 0.8), node.kill)
        try:
            while True:
                numbers = list(range(attempted, attempted + BATCH))
                attempted += BATCH
                commands = [(Send(body=b"%08d" % n), q.snd, q.ssecret) for n in numbers]
                answers = await link.request_many(commands, timeout=20)
                for n, answer in zip(numbers, answers):
                    assert isinstance(answer, Ok), answer
                    confirmed.append(n)
        except (LinkClosed, asyncio.TimeoutError):
            pass
        finally:
            killer.cancel()
            await link.close()
        node.kill()
        node.start()

    assert len(confirmed) > KILLS * BATCH, "the node was killed before confirming anything"
    link = await RelayLink.connect(node.address)
    try:
        received = []
        while not isinstance(got := await link.request(Get(), q.rid, q.rsecret), NoMessage):
            received.append(int(delivery.open_message(q.queue_key, got.box)[1]))
            assert isinstance(await link.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
    finally:
        await link.close()
    assert received == sorted(set(received)), "duplicates or reordering"
    missing = set(confirmed) - set(received)
    assert not missing, f"{len(missing)} confirmed message(s) lost"
    assert set(received) <= set(range(attempted))
    print(f"attempted {attempted}, confirmed {len(confirmed)}, received {len(received)}")
