"""An invitation made with "accept automatically" is accepted even when a link fails on the way.

The request is stored and its invitation deleted before the ACK; a failed ACK
or a failed accept used to leave the request pending for a user who had said
not to be asked (the lab's scripted users waited for it forever).
"""

import pytest

from onionpost.transport import LinkClosed

from .conftest import Person, close_agent

pytestmark = pytest.mark.timeout(90)


async def until_connected(inviter, joiner, rounds: int = 20) -> None:
    for _ in range(rounds):
        await inviter.receive(wait=0.3)
        await joiner.receive(wait=0.3)
        if [c.state for c in inviter.contacts()] == ["connected"] and \
                [c.state for c in joiner.contacts()] == ["connected"]:
            return
    raise AssertionError(f"not connected: {inviter.contacts()} / {joiner.contacts()}")


async def test_a_failed_ack_of_the_request_does_not_lose_the_automatic_accept(nodes, tmp_path):
    relay = nodes("relay")
    alice, bob = Person(tmp_path / "alice", "alice", [relay]).agent(), Person(tmp_path / "bob", "bob", [relay]).agent()
    try:
        _, link = await alice.invite(auto_accept=True)
        await bob.connect(link, via="link", alias="alice")
        ack, failed = alice.network.ack, []

        async def ack_once_broken(queue, mid):
            if not failed:
                failed.append(mid)
                raise LinkClosed("the link dropped under the ACK")
            return await ack(queue, mid)

        alice.network.ack = ack_once_broken
        await until_connected(alice, bob)
        assert failed, "the ACK never failed: the test proves nothing"
        assert [e.kind for e in alice.events].count("accepted") == 1
    finally:
        await close_agent(alice)
        await close_agent(bob)


async def test_a_request_left_unaccepted_by_a_failure_is_accepted_after_a_restart(nodes, tmp_path):
    relay = nodes("relay")
    alice_home = Person(tmp_path / "alice", "alice", [relay])
    alice, bob = alice_home.agent(), Person(tmp_path / "bob", "bob", [relay]).agent()
    try:
        _, link = await alice.invite(auto_accept=True)
        await bob.connect(link, via="link", alias="alice")

        async def unreachable(queue, key):
            raise LinkClosed("the relay cannot be reached")

        alice.network.secure_queue = unreachable
        await alice.receive(wait=0.5)  # stores the request; every automatic accept fails and is retried
        assert [c.state for c in alice.requests()] == ["pending"]
        assert any(e.kind == "warning" and "automatically" in e.text for e in alice.events)
        await close_agent(alice)  # the daemon stops before the relay answers again

        alice = alice_home.agent()
        await until_connected(alice, bob)
        assert alice.requests() == []
    finally:
        await close_agent(alice)
        await close_agent(bob)
