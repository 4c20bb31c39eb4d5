"""A long conversation across two relays survives a killed client and restarted relays."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from onionpost.client.db import open_database

from .conftest import PASSWORD, REPO, Person, close_agent, connect_pair

N = 100


def incoming_texts(person: Person, alias: str) -> list[str]:
    db = open_database(person.home, PASSWORD, create=False)
    try:
        rows = db.fetch_all(
            "SELECT m.text FROM messages m JOIN contacts c ON c.id = m.contact_id "
            "WHERE c.alias = ? AND m.direction = 'in' ORDER BY m.seq",
            (alias,),
        )
    finally:
        db.close()
    return [r[0] for r in rows]


def receive_and_kill(person: Person, alias: str, kill_after: int) -> None:
    """Run 'onionpost receive' and SIGKILL it once it has stored ``kill_after`` messages."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "onionpost", "--home", str(person.home), "receive", "--wait", "5"],
        cwd=REPO, env=dict(os.environ, ONIONPOST_PASSWORD=PASSWORD),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(incoming_texts(person, alias)) < kill_after:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "receive made no progress"
            time.sleep(0.05)
        assert proc.poll() is None, "receive ended before it could be killed midway"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def receive_until(person: Person, alias: str, count: int, sender: Person | None = None) -> list[str]:
    """Receive until ``count`` messages are stored; ``sender`` retries its pending sends in between."""
    for _ in range(10):
        if sender is not None:
            assert sender.cli("receive", "--wait", "0.5").returncode == 0
        result = person.cli("receive", "--wait", "1")
        assert result.returncode == 0, result.stderr
        texts = incoming_texts(person, alias)
        if len(texts) >= count:
            return texts
    return incoming_texts(person, alias)


async def send_all(agent, alias: str, texts: list[str]) -> None:
    for text in texts:
        await agent.send(alias, text)
        await agent.flush()


@pytest.mark.timeout(300)
async def test_hundred_messages_each_way_with_kills_and_restarts(nodes, tmp_path):
    relay_a, relay_b = nodes("relay-a"), nodes("relay-b")
    alice = Person(tmp_path / "alice", "alice", [relay_a])
    bob = Person(tmp_path / "bob", "bob", [relay_b])
    a, b = alice.agent(), bob.agent()
    try:
        bob_alias, alice_alias = await connect_pair(a, b)
    finally:
        await close_agent(a), await close_agent(b)

    # Alice -> Bob: Bob's relay is killed midway (sends stay pending), Bob's client is killed midway.
    a = alice.agent()
    try:
        await send_all(a, bob_alias, [f"a2b {i}" for i in range(1, 41)])
        relay_b.kill()
        await send_all(a, bob_alias, [f"a2b {i}" for i in range(41, 61)])
        pending = a.history(bob_alias, limit=N)
        assert any(m["state"] == "pending" for m in pending), "sends to a dead relay must stay pending"
        relay_b.start()
        await send_all(a, bob_alias, [f"a2b {i}" for i in range(61, N + 1)])
        await a.flush(due_only=False)
        assert a.store.outbox_count() == 0
    finally:
        await close_agent(a)
    receive_and_kill(bob, alice_alias, kill_after=30)
    assert incoming_texts(bob, alice_alias) == [f"a2b {i}" for i in range(1, len(incoming_texts(bob, alice_alias)) + 1)]
    assert receive_until(bob, alice_alias, N) == [f"a2b {i}" for i in range(1, N + 1)]

    # Bob -> Alice: Alice's relay restarted (SIGTERM) midway, Alice's client killed midway.
    b = bob.agent()
    try:
        await send_all(b, alice_alias, [f"b2a {i}" for i in range(1, 51)])
        relay_a.stop()
        relay_a.start()
        await send_all(b, alice_alias, [f"b2a {i}" for i in range(51, N + 1)])
        # Alice's queue also holds Bob's 100 receipts: past its quota (128) the rest waits in Bob's outbox.
        await b.flush(due_only=False)
        assert b.store.outbox_count() > 0
    finally:
        await close_agent(b)
    receive_and_kill(alice, bob_alias, kill_after=20)
    assert receive_until(alice, bob_alias, N, sender=bob) == [f"b2a {i}" for i in range(1, N + 1)]

    # Receipts flow back: every message Alice sent ends up delivered.
    a = alice.agent()
    try:
        await a.receive(wait=1)
        states = {m["state"] for m in a.history(bob_alias, limit=3 * N) if m["direction"] == "out"}
    finally:
        await close_agent(a)
    assert states == {"delivered"}
    # Nothing was shown twice: the store holds each message once.
    assert len(incoming_texts(bob, alice_alias)) == N and len(incoming_texts(alice, bob_alias)) == N


@pytest.mark.timeout(60)
async def test_messages_keep_flowing_after_a_queue_link_drops(nodes, tmp_path):
    """A dropped link is replaced by whatever command needs it next (here the ACK of a message
    already received); the replacement must carry the subscription, or pushes stop."""
    alice = Person(tmp_path / "alice", "alice", [nodes("relay-a")])
    bob = Person(tmp_path / "bob", "bob", [nodes("relay-b")])
    a, b = alice.agent(), bob.agent()
    try:
        bob_alias, alice_alias = await connect_pair(a, b)
        await a.send(bob_alias, "one")
        await a.flush()
        await a.receive(wait=0.2), await b.receive(wait=0.3)  # Bob's receipt now waits for Alice
        await asyncio.sleep(0.3)
        inbound = next(link for key, link in a.network._links.items() if key.startswith("in:"))  # noqa: SLF001
        await inbound.close()
        await b.send(alice_alias, "after the drop")
        await b.flush()
        for _ in range(3):
            await a.receive(wait=0.5)
            await b.receive(wait=0.2)
        assert [m["text"] for m in a.history(bob_alias) if m["direction"] == "in"] == ["after the drop"]
    finally:
        await close_agent(a), await close_agent(b)


@pytest.mark.timeout(90)
async def test_rotation_moves_to_fresh_queues_without_losing_messages_in_flight(nodes, tmp_path):
    alice = Person(tmp_path / "alice", "alice", [nodes("relay-a1"), nodes("relay-a2")])
    bob = Person(tmp_path / "bob", "bob", [nodes("relay-b")])
    a, b = alice.agent(), bob.agent()
    try:
        bob_alias, alice_alias = await connect_pair(a, b)
        old_inbound = a.db.fetch_one("SELECT inbound FROM contacts WHERE alias = ?", (bob_alias,))[0]
        await b.send(alice_alias, "in flight 1")  # waiting on the old queue while Alice rotates
        await b.flush()
        new_relay = await a.rotate(bob_alias)
        await b.send(alice_alias, "in flight 2")  # Bob has not seen the rotation yet: old queue too
        await b.flush()
        await b.receive(wait=0.5)  # Bob gets qnew: sends qdone on the old queue, switches
        await b.send(alice_alias, "on the new queue")
        await b.flush()
        for _ in range(3):
            await a.receive(wait=0.5)
            await b.receive(wait=0.2)
        # Both queues are read during the switch, so arrival order may differ; the sender's order (seq) is intact.
        received = sorted((m["seq"], m["text"]) for m in a.history(bob_alias) if m["direction"] == "in")
        assert [text for _, text in received] == ["in flight 1", "in flight 2", "on the new queue"]
        new_inbound = a.db.fetch_one("SELECT inbound, next_inbound FROM contacts WHERE alias = ?", (bob_alias,))
        assert new_inbound[1] is None and new_inbound[0] != old_inbound  # the rotation completed
        from onionpost.client.queues import InboundQueue

        old, new = InboundQueue.from_bytes(old_inbound), InboundQueue.from_bytes(new_inbound[0])
        assert new.relay == new_relay != old.relay  # moved to Alice's other relay
        assert {old.rid, old.snd}.isdisjoint({new.rid, new.snd})
        # The old queue is gone from its relay.
        with pytest.raises(Exception, match="NO_QUEUE"):
            await a.network.get(old)
        await a.send(bob_alias, "still talking")
        await a.flush()
        await b.receive(wait=0.5)
        assert [m["text"] for m in b.history(alice_alias) if m["direction"] == "in"] == ["still talking"]
    finally:
        await close_agent(a), await close_agent(b)
