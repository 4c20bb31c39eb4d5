"""The whole system over real Tor: onion relays, people with their own tor and agent.

Shared by the workflow tests (on the session's network) and the relay-failure
test (on a network of its own, since it kills one of its relays).
"""

import time
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from onionpost.client.agent import Agent
from onionpost.client.db import open_database
from onionpost.client.profiles import add_relay, create_profile, get_profile
from onionpost.client.tor import ClientTor, TorSettings
from onionpost.demo import RelayProcess
from onionpost.torconfig.control import TorControl

PASSWORD = "tor test password"


@contextmanager
def onion_relays(testnet: Path, base: Path, names=("relay-a", "relay-b")):
    """onionpost relays published as onion services (child processes, stopped by PID)."""
    started = [RelayProcess(base / name, testnet) for name in names]
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


def make_homes(relays: list[RelayProcess], base: Path) -> dict[str, Path]:
    """Alice on the first relay, Bob on the second: separate homes, separate profiles."""
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
async def clients(homes: dict[str, Path], testnet: Path, timeout: float = 60):
    """Start each person's own tor and agent; stop all of it afterwards."""
    started: list[Client] = []
    try:
        for name in ("alice", "bob"):
            tor = ClientTor(homes[name], TorSettings(testnet=testnet))
            connector = await tor.start(progress=lambda *_: None)
            # Connect the controller first: stream sources are only known from STREAM events.
            control = await TorControl.connect(tor.process.control_port, cookie_path=tor.process.control_cookie_path)
            db = open_database(homes[name], PASSWORD, create=False)
            agent = Agent(db, get_profile(db, name), connector=connector, timeout=timeout)
            started.append(Client(homes[name], tor, agent, control))
        yield started
    finally:
        for client in started:
            await client.agent.close()
            client.agent.db.close()
            await client.control.close()
            client.tor.stop()


async def connect_pair(homes: dict[str, Path], testnet: Path) -> tuple[list[str], list[str]]:
    """Alice invites, Bob joins, Alice's client accepts. Returns both sides' contact states."""
    async with clients(homes, testnet) as (alice, bob):
        _, link = await alice.agent.invite(auto_accept=True)
        await bob.agent.connect(link, via="link", alias="alice")
        await settle(alice.agent, bob.agent)
        return [c.state for c in alice.agent.contacts()], [c.state for c in bob.agent.contacts()]


async def settle(*agents: Agent, rounds: int = 2, wait: float = 1.5) -> None:
    for _ in range(rounds):
        for agent in agents:
            await agent.receive(wait=wait)


async def settle_until(done: Callable[[], bool], *agents: Agent, within: float, wait: float = 1.5) -> None:
    """Receive on every agent until ``done()`` holds, as a person would keep the client open.

    Over Tor the time this takes varies by minutes (a restarted onion service is
    reachable again only once tor has a fresh descriptor and introduction
    points), so a test waits for the outcome, not for a fixed number of rounds.
    """
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return  # the caller's assertion says what is missing
        for agent in agents:
            await agent.receive(wait=wait)


def texts(agent: Agent, alias: str, direction: str) -> list[str]:
    return [m["text"] for m in agent.history(alias, limit=500) if m["direction"] == direction]


async def queue_circuits(client: Client) -> dict[str, tuple[str, str, tuple]]:
    """For each open queue link: its tag -> (circuit id, the circuit's SOCKS username, its path)."""
    streams = {s.source_port: s for s in await client.control.streams() if s.source_port}
    circuits = {c.id: c for c in await client.control.circuits()}
    result = {}
    for key, link in client.agent.network._links.items():  # noqa: SLF001 (the test inspects the sockets)
        if not link.is_open:
            continue
        tag = key.split("@", 1)[0]  # keys are "tag@address", and addresses contain "@" too
        local_port = link._ws.get_extra_info("socket").getsockname()[1]  # noqa: SLF001
        stream = streams[local_port]
        circuit = circuits[stream.circuit_id]
        result[tag] = (stream.circuit_id, circuit.socks_username, circuit.path)
    return result
