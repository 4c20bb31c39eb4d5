"""A relay that substitutes keys during the handshake is detected; the connection never completes."""

import dataclasses

import pytest
from onionpost.client.e2e import create_invitation, create_request
from onionpost.proto import Send

from .conftest import Person, close_agent, start_in_process

async def start_rewriting_node(data_dir, rewrite):
    """An in-process node whose mailbox passes every unsigned SEND body through ``rewrite``."""

    def patch(node):
        honest_send = node.mailbox.send

        def send(t):
            if not t.signature:
                t = dataclasses.replace(t, command=Send(rewrite(t.command.body)))
            return honest_send(t)

        node.mailbox.send = send

    return await start_in_process(data_dir, patch)


def substitute_request(body: bytes) -> bytes:
    """What a relay in the middle can do: replace the request with one made with keys of its own."""
    _, attacker_invitation = create_invitation()
    return create_request(attacker_invitation, b"attacker")[1]


def flip_bits(body: bytes) -> bytes:
    return body[:500] + bytes([body[500] ^ 0x01]) + body[501:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rewrite", [substitute_request, flip_bits])
async def test_rewritten_connection_request_is_refused(tmp_path, nodes, rewrite):
    honest = nodes("honest")
    from tests.integration.relay_helpers import NodeProcess

    evil_node = NodeProcess.create(tmp_path / "evil")
    runner = await start_rewriting_node(evil_node.data_dir, rewrite)
    alice = Person(tmp_path / "alice", "alice", [evil_node])
    bob = Person(tmp_path / "bob", "bob", [honest])
    a, b = alice.agent(), bob.agent()
    try:
        _, link = await a.invite(auto_accept=True)
        await b.connect(link, via="link")
        events = await a.receive(wait=0.5)
        await b.receive(wait=0.5)
        assert [e.kind for e in events] == ["warning"]
        assert "failed authentication" in events[0].text and "tampered" in events[0].text
        assert a.requests() == [] and a.contacts() == []
        assert [c.state for c in b.contacts()] == ["requested"]
    finally:
        await close_agent(a), await close_agent(b)
        await runner.cleanup()


@pytest.mark.timeout(60)
async def test_rewritten_accept_is_refused(tmp_path, nodes):
    honest = nodes("honest")
    from tests.integration.relay_helpers import NodeProcess

    evil_node = NodeProcess.create(tmp_path / "evil")
    runner = await start_rewriting_node(evil_node.data_dir, flip_bits)
    alice = Person(tmp_path / "alice", "alice", [honest])
    bob = Person(tmp_path / "bob", "bob", [evil_node])  # the accept travels to Bob's queue on the evil relay
    a, b = alice.agent(), bob.agent()
    try:
        _, link = await a.invite(auto_accept=True)
        await b.connect(link, via="link")
        await a.receive(wait=0.5)
        events = await b.receive(wait=0.5)
        assert [e.kind for e in events] == ["warning"]
        assert "failed authentication" in events[0].text
        assert [c.state for c in b.contacts()] == ["requested"]
        assert [c.state for c in a.contacts()] == ["accepted"]  # never connected: no profile came back
    finally:
        await close_agent(a), await close_agent(b)
        await runner.cleanup()
