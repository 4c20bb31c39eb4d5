"""The whole system over real Tor: two onion relays, two people, forwarding, isolation, failures.

Runs on the session's private Tor network. Not covered yet: a Tor relay of the
network dying mid-conversation (see issue 4's note: in the test network the
authorities keep a dead relay listed, and clients stall for minutes).
"""

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from client.agent import Agent
from client.db import open_database
from client.profiles import add_relay, create_profile, get_profile
from client.tor import ClientTor, TorSettings
from onionpost.demo import RelayProcess
from torconfig.control import TorControl
from torconfig.socks import isolation_credentials

pytestmark = pytest.mark.tor
PASSWORD = "tor test password"


@pytest.fixture(scope="module")
def relays(tor_network, tmp_path_factory):
    """Two onionpost relays published as onion services (child processes, stopped by PID)."""
    base = tmp_path_factory.mktemp("onion-relays")
    started = [RelayProcess(base / name, tor_network.directory) for name in ("relay-a", "relay-b")]
    try:
        for relay in started:
            relay.init()
            relay.start()
        for relay in started:
            relay.wait_listening()
        yield started
    finally:
        for relay in started:
            relay.stop()


@pytest.fixture(scope="module")
def homes(relays, tmp_path_factory):
    """Alice on relay A, Bob on relay B: separate homes, separate profiles."""
    base = tmp_path_factory.mktemp("homes")
    result = {}
    for name, relay in (("alice", relays[0]), ("bob", relays[1])):
        db = open_database(base / name, PASSWORD, create=True)
        add_relay(db, create_profile(db, name, name.capitalize()), relay.address)
        db.close()
        result[name] = base / name
    return result


class Client:
    def __init__(self, home: Path, tor: ClientTor, agent: Agent, control: TorControl):
        self.home, self.tor, self.agent, self.control = home, tor, agent, control


@asynccontextmanager
async def clients(homes, tor_network):
    """Start each person's own tor and agent; stop all of it afterwards."""
    started: list[Client] = []
    try:
        for name in ("alice", "bob"):
            tor = ClientTor(homes[name], TorSettings(testnet=tor_network.directory))
            connector = await tor.start(progress=lambda *_: None)
            # Connect the controller first: stream sources are only known from STREAM events.
            control = await TorControl.connect(tor.process.control_port, cookie_path=tor.process.control_cookie_path)
            db = open_database(homes[name], PASSWORD, create=False)
            agent = Agent(db, get_profile(db, name), connector=connector, timeout=60)
            started.append(Client(homes[name], tor, agent, control))
        yield started
    finally:
        for client in started:
            await client.agent.close()
            client.agent.db.close()
            await client.control.close()
            client.tor.stop()


async def settle(*agents: Agent, rounds: int = 2, wait: float = 1.5) -> None:
    for _ in range(rounds):
        for agent in agents:
            await agent.receive(wait=wait)


def texts(agent: Agent, alias: str, direction: str) -> list[str]:
    return [m["text"] for m in agent.history(alias, limit=500) if m["direction"] == direction]


@pytest.fixture(scope="module")
def connected(homes, tor_network):
    """Alice invites, Bob joins, Alice's client accepts: both connected, over Tor."""

    async def connect():
        async with clients(homes, tor_network) as (alice, bob):
            _, link = await alice.agent.invite(auto_accept=True)
            await bob.agent.connect(link, via="link", alias="alice")
            await settle(alice.agent, bob.agent)
            return [c.state for c in alice.agent.contacts()], [c.state for c in bob.agent.contacts()]

    assert asyncio.run(connect()) == (["connected"], ["connected"])
    return homes


@pytest.mark.timeout(300)
async def test_invite_connect_and_talk_across_two_onion_relays(connected, tor_network):
    async with clients(connected, tor_network) as (alice, bob):
        bob_alias = alice.agent.contacts()[0].alias
        for i in range(5):
            await alice.agent.send(bob_alias, f"a{i}")
            await bob.agent.send("alice", f"b{i}")
        await settle(bob.agent, alice.agent, rounds=3)
        assert texts(bob.agent, "alice", "in") == [f"a{i}" for i in range(5)]
        assert texts(alice.agent, bob_alias, "in") == [f"b{i}" for i in range(5)]
        assert {m["state"] for m in alice.agent.history(bob_alias) if m["direction"] == "out"} == {"delivered"}


async def queue_circuits(client: Client) -> dict[str, tuple[str, str]]:
    """For each open queue link: its tag -> (circuit id, the circuit's SOCKS username)."""
    streams = {s.source_port: s for s in await client.control.streams() if s.source_port}
    circuits = {c.id: c for c in await client.control.circuits()}
    result = {}
    for key, link in client.agent.network._links.items():  # noqa: SLF001 (the test inspects the sockets)
        if not link.is_open:
            continue
        tag = key.split("@", 1)[0]  # keys are "tag@address", and addresses contain "@" too
        local_port = link._ws.get_extra_info("socket").getsockname()[1]  # noqa: SLF001
        stream = streams[local_port]
        result[tag] = (stream.circuit_id, circuits[stream.circuit_id].socks_username)
    return result


@pytest.mark.timeout(240)
async def test_each_queue_uses_its_own_circuit_even_after_a_reconnect(connected, tor_network):
    async with clients(connected, tor_network) as (alice, bob):
        bob_alias = alice.agent.contacts()[0].alias
        await alice.agent.send(bob_alias, "over separate circuits")
        await settle(alice.agent, bob.agent, rounds=1)
        for client in (alice, bob):
            used = await queue_circuits(client)
            assert len(used) >= 2, used  # the inbound queue and the outbound queue at least
            circuit_ids = [circuit for circuit, _ in used.values()]
            assert len(set(circuit_ids)) == len(circuit_ids), "two queues shared a circuit"
            for tag, (_, username) in used.items():
                assert username == isolation_credentials(tag)[0]

        # Drop Alice's inbound queue link; the agent reconnects it on its own circuit, never another queue's.
        before = await queue_circuits(alice)
        inbound_tag = next(t for t in before if t.startswith("in:"))
        inbound_link = next(link for key, link in alice.agent.network._links.items() if key.startswith(inbound_tag))  # noqa: SLF001
        await inbound_link.close()
        await bob.agent.send("alice", "after the reconnect")
        await settle(bob.agent, alice.agent, rounds=2)
        assert texts(alice.agent, bob_alias, "in")[-1:] == ["after the reconnect"], alice.agent.events
        after = await queue_circuits(alice)
        others = {circuit for tag, (circuit, _) in after.items() if tag != inbound_tag}
        assert after[inbound_tag][0] not in others
        assert after[inbound_tag][1] == isolation_credentials(inbound_tag)[0]


@pytest.mark.timeout(300)
async def test_relay_restart_keeps_its_onion_address_and_loses_nothing(connected, relays, tor_network):
    relay_b = relays[1]
    address = relay_b.address
    async with clients(connected, tor_network) as (alice, bob):
        bob_alias = alice.agent.contacts()[0].alias
        relay_b.stop()
        for i in range(3):
            await alice.agent.send(bob_alias, f"while down {i}")
        assert any(m["state"] == "pending" for m in alice.agent.history(bob_alias))
        relay_b.start()
        assert relay_b.wait_listening() == address
        await settle(alice.agent, bob.agent, rounds=3)
        assert texts(bob.agent, "alice", "in")[-3:] == [f"while down {i}" for i in range(3)]
