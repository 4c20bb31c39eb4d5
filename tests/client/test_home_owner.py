"""Two writers on one home never encrypt two texts under one message key.

Reproduces the interleaving seen in the field: process A receives a message
and, between reading the ratchet and writing it back, process B queues a
message on the same contact. With the read outside A's transaction (the old
code) B's message and A's receipt came out of the same ratchet state, under
the same message key and nonce, and the peer dropped one as a replay. Now A
reads inside its write transaction, so B waits (or, as here with a short
busy timeout, fails and retries) and the two messages use different keys.
"""

import pytest

from onionpost.client import agent as agent_module
from onionpost.client import payloads

from .conftest import Person, close_agent, connect_pair


@pytest.mark.timeout(120)
async def test_a_send_from_a_second_writer_during_a_receive_uses_a_fresh_key(tmp_path, nodes):
    relay = nodes("relay")
    alice, bob = Person(tmp_path / "alice", "alice", [relay]), Person(tmp_path / "bob", "bob", [relay])
    a, b = alice.agent(), bob.agent()
    second = alice.agent()  # "process B": its own connection to alice's store
    second.db.execute("PRAGMA busy_timeout = 200")
    try:
        bob_alias, alice_alias = await connect_pair(a, b)
        first = await b.send(alice_alias, "from bob")
        await b.flush()
        contact_id = second.contact(bob_alias).id
        attempts = []
        real_decrypt = agent_module.e2e.ratchet_decrypt

        def interleaved(*args, **kwargs):
            result = real_decrypt(*args, **kwargs)
            if not attempts:
                try:  # what 'onionpost send' in another process does, right between A's read and A's write
                    with second.store.transaction():
                        message_id = second.store.add_outgoing_message(contact_id, "from process B", 0)
                        second._queue_chat(contact_id, payloads.encode("msg", text="from process B", ts=0),
                                           message_id=message_id)
                    attempts.append("interleaved")
                except Exception as exc:  # noqa: BLE001 - sqlite's "database is locked"
                    attempts.append(f"waited: {exc}")
            return result

        agent_module.e2e.ratchet_decrypt = interleaved
        try:
            await a.receive(wait=0.5)  # stores bob's message and queues the receipt
        finally:
            agent_module.e2e.ratchet_decrypt = real_decrypt
        assert attempts and attempts[0].startswith("waited"), attempts  # B could not slip in between
        await second.send(bob_alias, "from process B")  # B's retry, after A committed
        await second.flush()
        await a.flush()
        await b.receive(wait=0.5)
        history = b.history(alice_alias)
        texts = [m["text"] for m in history if m["direction"] == "in"]
        assert texts == ["from process B"]
        assert [m["state"] for m in history if m["id"] == first["id"]] == ["delivered"]  # A's receipt was readable
        assert not [e for e in b.events if e.kind == "warning"], [e.text for e in b.events]
    finally:
        for agent in (a, b, second):
            await close_agent(agent)
