"""New queues spread across relay operators; a family (one operator) counts as one relay."""

import os
import random

from onionpost.client.agent import Agent
from onionpost.client.db import open_database
from onionpost.client.profiles import add_relay, create_profile, normalise_relay_address
from onionpost.client.queues import InboundQueue

KEYS = ["A" * 43, "B" * 43, "C" * 43]
ADDRESSES = [normalise_relay_address(f"onionpost://{key}@127.0.0.1:{9000 + i}") for i, key in enumerate(KEYS)]


def agent_with(tmp_path, families):
    db = open_database(tmp_path, "pw", create=True)
    profile = create_profile(db, "alice")
    for address, family in zip(ADDRESSES, families):
        add_relay(db, profile, address, family=family)
    seeded = random.Random(7)
    return Agent(db, profile, rng=lambda n: seeded.randbytes(n))


def place(agent, count: int, avoid: str | None = None) -> dict[str, int]:
    """Pick a relay ``count`` times, each time storing a queue there as invite() would; count per relay."""
    placed: dict[str, int] = {}
    for i in range(count):
        relay = agent._pick_relay(avoid=avoid)
        queue = InboundQueue(relay.address, os.urandom(24), os.urandom(24), os.urandom(64), os.urandom(32))
        with agent.store.transaction():
            agent.store.add_invitation(queue.to_bytes(), b"s", f"link{i}", "qr", False, 0)
        placed[relay.address] = placed.get(relay.address, 0) + 1
    return placed


def test_queues_spread_evenly_across_independent_relays(tmp_path):
    agent = agent_with(tmp_path, [None, None, None])
    placed = place(agent, 9)
    assert placed == {address: 3 for address in ADDRESSES}
    agent.db.close()


def test_a_family_counts_as_one_operator(tmp_path):
    agent = agent_with(tmp_path, ["acme", "acme", None])  # two relays run by one operator, and an independent one
    placed = place(agent, 8)
    assert placed.get(ADDRESSES[0], 0) + placed.get(ADDRESSES[1], 0) == 4  # the family holds half, not two thirds
    assert placed[ADDRESSES[2]] == 4
    agent.db.close()


def test_rotation_avoids_the_current_operator(tmp_path):
    agent = agent_with(tmp_path, ["acme", "acme", None])
    for _ in range(5):
        assert agent._pick_relay(avoid=ADDRESSES[0]).address == ADDRESSES[2]
    agent.db.close()
