"""The client's defences against traffic correlation, on loopback relays (client/timing.py, docs/privacy.md).

Each defence is switched on in a real agent talking to a real relay process,
and the test watches what leaves the client: cover messages that look like
messages and are never shown, sends spaced by the send delay, sends that
leave at batch-window ends, links that reopen at their own times after a
relay restart, and the lab-only ``shared`` isolation on one socket.
"""

import asyncio
import dataclasses
import random
import statistics
import time

import pytest

from onionpost.client.agent import Agent
from onionpost.client.db import open_database
from onionpost.client.profiles import get_profile
from onionpost.client.timing import TimingPolicy

from .conftest import PASSWORD, Person, close_agent, connect_pair, run_cli

pytestmark = pytest.mark.timeout(120)


def agent(person: Person, seed: int = 1, isolation: str = "queue", **timing) -> Agent:
    """An agent with no defence but the ones named (seeded)."""
    db = open_database(person.home, PASSWORD, create=False)
    policy = dataclasses.replace(TimingPolicy.immediate(), **timing).with_rng(random.Random(seed))
    return Agent(db, get_profile(db, person.name), timeout=10, timing=policy, isolation=isolation)


@pytest.fixture
def pair(tmp_path, nodes):
    relay = nodes("relay")
    alice, bob = Person(tmp_path / "alice", "alice", [relay]), Person(tmp_path / "bob", "bob", [relay])
    a, b = alice.agent(), bob.agent()

    async def connect():
        try:
            return await connect_pair(a, b)
        finally:
            await close_agent(a), await close_agent(b)

    aliases = asyncio.run(connect())
    return alice, bob, aliases


def record_sends(agent: Agent) -> list[tuple[float, int]]:
    """(wall time, body size) of every SEND body the agent hands its relay."""
    sent: list[tuple[float, int]] = []
    original = agent.network.send

    async def send(queue, body):
        sent.append((time.time(), len(body)))
        await original(queue, body)

    agent.network.send = send
    return sent


async def run_for(agents: list[Agent], until, timeout: float) -> None:
    """Run the agents until ``until()`` holds (checked every 0.1 s), or fail after ``timeout`` seconds."""
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        async with asyncio.timeout(timeout):
            while not until():
                await asyncio.sleep(0.1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_cover_messages_have_a_real_messages_size_and_the_recipient_shows_nothing(pair):
    alice, bob, (bob_alias, alice_alias) = pair
    a = agent(alice, cover_rate=60.0, cover_mode="constant")  # one a second
    b = agent(bob)
    sent = record_sends(a)
    received: list[int] = []
    original = b._handle

    async def handle(delivery):
        received.append(len(delivery.body))
        await original(delivery)

    b._handle = handle
    try:
        await a.send(bob_alias, "the only real message")
        await run_for([a, b], lambda: len(received) >= 6, timeout=60)
        assert len({size for _, size in sent}) == 1, sent  # the relay sees one size: real and cover alike
        assert len(set(received)) == 1 and received[0] == sent[0][1]
        history = b.history(alice_alias, mark_read=False)
        assert [m["text"] for m in history] == ["the only real message"]
        assert [c.unread for c in b.contacts()] == [1]
        assert [e.kind for e in b.events if e.kind in ("message", "warning")] == ["message"]
        # Bob answered the real message with one receipt and the cover with nothing.
        rows = b.db.fetch_all("SELECT count(*) FROM messages WHERE direction = 'in'")
        assert rows[0][0] == 1
        await run_for([a, b], lambda: any(e.kind == "delivered" for e in a.events), timeout=30)
        receipts = [e for e in a.events if e.kind == "delivered"]
        assert len(receipts) == 1
    finally:
        await close_agent(a), await close_agent(b)


async def test_cover_messages_leave_at_the_configured_rate(pair):
    alice, _bob, _aliases = pair
    a = agent(alice, seed=3, cover_rate=30.0, cover_mode="constant")  # every 2 s, from a random phase
    sent = record_sends(a)
    try:
        await run_for([a], lambda: len(sent) >= 5, timeout=60)
    finally:
        await close_agent(a)
    gaps = [t2 - t1 for (t1, _), (t2, _) in zip(sent, sent[1:])]
    assert statistics.median(gaps) == pytest.approx(2.0, abs=0.4), gaps


async def test_each_message_waits_its_own_random_send_delay(pair):
    alice, _bob, (bob_alias, _) = pair
    a = agent(alice, seed=5, send_delay=1.5)
    sent = record_sends(a)
    queued = []
    try:
        for i in range(6):
            queued.append(time.time())
            await a.send(bob_alias, f"delayed {i}")
        rows = {r.message_id: r.not_before for r in a.store.outbox()}
        await run_for([a], lambda: len(sent) >= 6, timeout=60)
    finally:
        await close_agent(a)
    delays = [nb - t for nb, t in zip(rows.values(), queued)]
    assert min(delays) >= 0 and statistics.mean(delays) > 0.5, delays  # exponential draws, mean 1.5 s
    # Each left no earlier than its own time (in order: a message waits for the one before it).
    for (left, _), not_before in zip(sent, rows.values()):
        assert left >= not_before - 0.01
    assert sent[-1][0] - queued[0] >= max(delays) - 0.01


async def test_batched_messages_leave_together_at_window_ends(pair):
    alice, _bob, (bob_alias, _) = pair
    window = 3.0
    a = agent(alice, batch=window)
    sent = record_sends(a)
    try:
        # Queue messages late in a window and early in the next: without batching they would leave at once.
        while not 1.5 < time.time() % window < 2.0:
            await asyncio.sleep(0.05)
        for i in range(3):
            await a.send(bob_alias, f"batched {i}")
        await run_for([a], lambda: len(sent) >= 3, timeout=30)
    finally:
        await close_agent(a)
    phases = [t % window for t, _ in sent]
    assert all(p < 0.7 for p in phases), phases  # just after a window end (a loaded machine is late)
    assert max(t for t, _ in sent) - min(t for t, _ in sent) < 0.7  # together


async def test_dropped_links_reopen_each_at_its_own_time_after_a_relay_restart(tmp_path, nodes):
    relay = nodes("relay")
    alice = Person(tmp_path / "alice", "alice", [relay])
    a = agent(alice, seed=7, reconnect_jitter=4.0)
    subscribed: list[float] = []
    original = a.network.subscribe

    async def subscribe(queue):
        link = await original(queue)
        subscribed.append(time.monotonic())
        return link

    a.network.subscribe = subscribe
    try:
        for _ in range(6):  # six inbound queues, one link each
            await a.invite()
        task = asyncio.create_task(a.run())
        try:
            async with asyncio.timeout(30):
                while len(subscribed) < 6:
                    await asyncio.sleep(0.05)
            relay.stop()
            relay.start()
            async with asyncio.timeout(60):
                while len(subscribed) < 12:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await close_agent(a)
    first, again = subscribed[:6], subscribed[6:]
    assert max(first) - min(first) < 1.0  # at start, with no spread, all at once
    assert max(again) - min(again) > 1.0, again  # six uniform draws over 4 s: not at one instant


async def test_each_queue_is_online_on_its_own_schedule_and_messages_sent_in_its_gaps_still_arrive(pair):
    alice, bob, (bob_alias, alice_alias) = pair
    a = agent(alice, seed=3, link_lifetime=0.8, link_gap=0.8)  # presence, scaled down from 30 s / 20 s
    b = agent(bob)
    opened: list[float] = []
    closed: list[float] = []
    subscribe, drop = a.network.subscribe, a.network.drop_link

    async def recording_subscribe(queue):
        link = await subscribe(queue)
        opened.append(time.monotonic())
        return link

    async def recording_drop(queue):
        closed.append(time.monotonic())
        await drop(queue)

    a.network.subscribe, a.network.drop_link = recording_subscribe, recording_drop
    texts = [f"in a gap or not {i}" for i in range(8)]

    async def bob_talks():
        for text in texts:
            await b.send(alice_alias, text)
            await asyncio.sleep(0.7)

    talking = asyncio.create_task(bob_talks())
    try:
        await run_for([a, b], lambda: talking.done() and len([e for e in a.events if e.kind == "message"]) >= 8,
                      timeout=90)
        history = a.history(bob_alias, mark_read=False)
    finally:
        talking.cancel()
        await close_agent(a), await close_agent(b)
    assert [m["text"] for m in history] == texts  # every message, once, in order
    # The queue's link closed by itself and reopened after a gap, again and again, with no one going offline.
    assert len(closed) >= 3 and len(opened) >= 4, (opened, closed)
    gaps = [min(t for t in opened if t > c) - c for c in closed if any(t > c for t in opened)]
    assert all(g > 0 for g in gaps) and statistics.mean(gaps) > 0.2, gaps


async def test_a_delivery_in_hand_when_a_lifetime_ends_is_acknowledged_before_the_gap(pair):
    # Otherwise the ACK opens a new link inside the gap (and renews the subscription): the relay would
    # see the queue online when its presence says it is not.
    alice, bob, (bob_alias, alice_alias) = pair
    a = agent(alice, seed=5, link_lifetime=0.05, link_gap=0.5)  # lifetimes end while a delivery is handled
    b = agent(bob)
    acks: list[bool] = []
    ack, handle = a.network.ack, a._handle

    async def recording_ack(queue, mid):
        link = a.network._links.get(a.network._key(queue.relay, a.network.tag_of(queue)))
        acks.append(link is not None and link.is_open)
        await ack(queue, mid)

    async def slow_handle(delivery):
        await asyncio.sleep(0.3)
        await handle(delivery)

    a.network.ack, a._handle = recording_ack, slow_handle
    try:
        for i in range(3):
            await b.send(alice_alias, f"slowly handled {i}")
        await run_for([a, b], lambda: len([e for e in a.events if e.kind == "message"]) >= 3, timeout=60)
    finally:
        await close_agent(a), await close_agent(b)
    assert len(acks) >= 3 and all(acks), acks  # every ACK on the link that carried its delivery


async def test_shared_isolation_puts_every_queue_on_one_socket(tmp_path, nodes):
    relay = nodes("relay")
    alice = Person(tmp_path / "alice", "alice", [relay])
    a = agent(alice, isolation="shared")
    try:
        for _ in range(3):
            await a.invite()
        task = asyncio.create_task(a.run())
        try:
            async with asyncio.timeout(30):
                while len(a.network._subscriptions) < 3:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert len(a.network._links) == 1 and {a.network.tag_of(q) for q in a.inbound_queues()} == {"shared"}
    finally:
        await close_agent(a)


@pytest.mark.parametrize(("args", "message"), [
    (("--isolation", "shared"), "--isolation shared puts all your queues on one circuit"),
    (("--cover-rate", "-1"), "--cover-rate must be between 0 and 60 per minute"),
    (("--cover-mode", "bursty"), "--cover-mode must be one of poisson, constant"),
    (("--send-delay", "-2"), "--send-delay must be between 0 and 86400 seconds"),
    (("--batch", "1e9"), "--batch must be between 0 and 86400 seconds"),
    (("--reconnect-jitter", "-1"), "--reconnect-jitter must be between 0 and 86400 seconds"),
    (("--link-gap", "-5"), "--link-gap must be between 0 and 86400 seconds"),
    (("--link-lifetime", "1e6"), "--link-lifetime must be between 0 and 86400 seconds"),
    (("--send-link-idle", "-1"), "--send-link-idle must be between 0 and 86400 seconds"),
])
def test_the_daemon_refuses_bad_defence_options_in_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("ONIONPOST_LAB", raising=False)
    alice = Person(tmp_path / "alice", "alice", [])
    result = alice.cli("daemon", *args, timeout=60)
    assert result.returncode == 1 and result.stderr.strip().startswith("error: ") and message in result.stderr, result
    assert "Traceback" not in result.stderr and not (alice.home / "daemon.sock").exists()
