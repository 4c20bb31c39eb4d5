"""Relays cannot link one person's queues: not from what they store, not from what they receive.

Alice knows Bob and Carol. Alice's relay holds her two inbound queues; Bob's
and Carol's inbound queues share a second relay. Both relays are run in this
process with their command dispatch wrapped, so the test sees exactly which
session sent which command for which queue.
"""

import sqlite3
from collections import defaultdict

import pytest
from tests.integration.relay_helpers import NodeProcess

from .conftest import Person, close_agent, connect_pair, start_in_process


def recorder(log: list):
    def patch(node):
        dispatch = node.dispatcher.dispatch

        def recording(conn, t, slot):
            log.append((conn, t.command.NAME, t.queue))  # the object, not id(): a freed session's id is reused
            return dispatch(conn, t, slot)

        node.dispatcher.dispatch = recording

    return patch


def queues_by_session(log) -> dict[object, set[bytes]]:
    sessions = defaultdict(set)
    for session, _, queue in log:
        if queue is not None:
            sessions[session].add(queue)
    return sessions


def stored_queues(node: NodeProcess) -> list[tuple]:
    with sqlite3.connect(node.data_dir / "node.db") as db:
        return db.execute("SELECT rid, snd, rkey, skey, queue_key FROM queues").fetchall()


@pytest.mark.timeout(120)
async def test_relays_cannot_link_a_persons_queues(tmp_path):
    relay_a, relay_bc = NodeProcess.create(tmp_path / "relay-a"), NodeProcess.create(tmp_path / "relay-bc")
    log_a, log_bc = [], []
    runners = [await start_in_process(relay_a.data_dir, recorder(log_a)), await start_in_process(relay_bc.data_dir, recorder(log_bc))]
    people = [Person(tmp_path / n, n, [r]) for n, r in (("alice", relay_a), ("bob", relay_bc), ("carol", relay_bc))]
    alice, bob, carol = (p.agent() for p in people)
    try:
        bob_alias, _ = await connect_pair(alice, bob)
        carol_alias, _ = await connect_pair(alice, carol)
        for agent, to in ((alice, bob_alias), (alice, carol_alias)):
            await agent.send(to, "hello")
            await agent.flush()
        await bob.receive(wait=0.3), await carol.receive(wait=0.3), await alice.receive(wait=0.3)
        await alice.rotate(bob_alias)  # rotation adds a queue: it must be just as unlinkable
        await alice.flush()
        await bob.receive(wait=0.3), await alice.receive(wait=0.3), await bob.receive(wait=0.3)
    finally:
        for agent in (alice, bob, carol):
            await close_agent(agent)
        for runner in runners:
            await runner.cleanup()

    # What Alice's relay stores: her queues share no id or key.
    rows = stored_queues(relay_a)
    assert len(rows) == 2  # one per contact (the rotated-away queue was deleted)
    for column in zip(*rows):
        assert len(set(column)) == len(column), "two of Alice's queues share a stored value"

    # What Alice's relay receives: no session ever carried commands for two queues.
    sessions = queues_by_session(log_a)
    assert sessions and all(len(queues) == 1 for queues in sessions.values())
    forwarded_in = {s for s, name, _ in log_a if name == "RFWD"}
    assert forwarded_in, "Bob's and Carol's messages reach Alice's relay through their relay"

    # On the shared relay only the node-to-node session (Alice's relay forwarding for all its users)
    # carries sends to both Bob's and Carol's queues; no client session touches two queues.
    client_sessions = {s: q for s, q in queues_by_session(log_bc).items() if not any(n == "RFWD" and x == s for x, n, _ in log_bc)}
    assert client_sessions and all(len(q) == 1 for q in client_sessions.values())
    # and every NEW came on a session of its own
    for log in (log_a, log_bc):
        new_sessions = {s for s, name, _ in log if name == "NEW"}
        assert all(not queues_by_session(log).get(s) for s in new_sessions)
