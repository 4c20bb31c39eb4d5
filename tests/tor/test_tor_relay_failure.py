"""A Tor relay of the network dies mid-conversation: the clients recover and every message arrives.

Runs on a private network of its own (it kills one of its relays). The relay
killed is one that Alice's queue circuits go through, her guard if it can be,
so that her links really break; the authorities then drop it from the
consensus, as they would on the real network (``testnet kill-relay``).
"""

import asyncio
import json
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from tests.tor.tor_helpers import private_network
from onionpost.torconfig.cli import app as network_cli
from tests.tor.workflow_helpers import clients, connect_pair, make_homes, onion_relays, queue_circuits, settle, settle_until, texts

pytestmark = pytest.mark.tor
RECOVERY_DEADLINE = 240.0


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with private_network(tmp_path_factory.mktemp("failing-testnet")) as network:
        yield network


@pytest.fixture(scope="module")
def connected(network, tmp_path_factory):
    with onion_relays(network.directory, tmp_path_factory.mktemp("onion-relays")) as relays:
        homes = make_homes(relays, tmp_path_factory.mktemp("homes"))
        assert asyncio.run(connect_pair(homes, network.directory)) == (["connected"], ["connected"])
        yield homes


def pick_victim(paths: list[tuple], relays: set[str]) -> str:
    """The relay (not an authority) on most of these circuits, a first hop (guard) if possible."""
    guards = Counter(path[0][1] for path in paths if path and path[0][1] in relays)
    if guards:
        return guards.most_common(1)[0][0]
    anywhere = Counter(nickname for path in paths for _, nickname in path if nickname in relays)
    assert anywhere, f"no relay of the network on Alice's circuits: {paths}"
    return anywhere.most_common(1)[0][0]


@pytest.mark.timeout(420)
async def test_clients_recover_when_a_tor_relay_dies_and_lose_nothing(connected, network):
    async with clients(connected, network.directory, timeout=30) as (alice, bob):
        bob_alias = alice.agent.contacts()[0].alias
        await alice.agent.send(bob_alias, "before 0")
        await alice.agent.flush()
        await bob.agent.send("alice", "before 1")
        await bob.agent.flush()
        await settle_until(
            lambda: texts(bob.agent, "alice", "in")[-1:] == ["before 0"] and texts(alice.agent, bob_alias, "in")[-1:] == ["before 1"],
            bob.agent, alice.agent, within=120,
        )
        assert texts(bob.agent, "alice", "in")[-1:] == ["before 0"]
        assert texts(alice.agent, bob_alias, "in")[-1:] == ["before 1"]

        used = await queue_circuits(alice)
        relays = {n["name"] for n in network.status()["nodes"] if n["role"] == "relay"}
        victim = pick_victim([path for _, _, path in used.values()], relays)
        links_before = dict(alice.agent.network._links)  # noqa: SLF001 (which sockets broke)

        result = CliRunner().invoke(network_cli, ["kill-relay", victim, "--dir", str(network.directory)])
        assert result.exit_code == 0, result.output
        assert "dropped it from the consensus" in result.output
        status = json.loads(CliRunner().invoke(network_cli, ["status", "--dir", str(network.directory), "--json"]).output)
        killed = next(n for n in status["nodes"] if n["name"] == victim)
        assert killed["removed"] and not killed["alive"]

        # Mid-conversation: both keep writing while circuits through the dead relay collapse.
        for i in range(5):
            await alice.agent.send(bob_alias, f"a{i}")
            await alice.agent.flush()
            await bob.agent.send("alice", f"b{i}")
            await bob.agent.flush()

        start = time.monotonic()
        while time.monotonic() - start < RECOVERY_DEADLINE:
            await settle(alice.agent, bob.agent, rounds=1, wait=2.0)
            out_states = {m["state"] for m in alice.agent.history(bob_alias) if m["direction"] == "out"}
            out_states |= {m["state"] for m in bob.agent.history("alice") if m["direction"] == "out"}
            if len(texts(bob.agent, "alice", "in")) == 6 and len(texts(alice.agent, bob_alias, "in")) == 6 \
                    and out_states == {"delivered"}:
                break
        refreshes = alice.tor.connector.refreshes, bob.tor.connector.refreshes
        print(f"killed {victim}; all delivered after {time.monotonic() - start:.1f} s; NEWNYMs (alice, bob) {refreshes}")
        problems = {name: [e for e in c.agent.events if e.kind == "warning"][-5:] for name, c in (("alice", alice), ("bob", bob))}
        assert texts(bob.agent, "alice", "in") == ["before 0"] + [f"a{i}" for i in range(5)], problems
        assert texts(alice.agent, bob_alias, "in") == ["before 1"] + [f"b{i}" for i in range(5)], problems
        assert out_states == {"delivered"}, problems

        # Alice's links through the dead relay broke and were replaced; none goes through it now.
        replaced = [key for key, link in links_before.items() if alice.agent.network._links.get(key) is not link]  # noqa: SLF001
        assert replaced, "no queue link of Alice's was reconnected"
        for tag, (_, _, path) in (await queue_circuits(alice)).items():
            assert victim not in {nickname for _, nickname in path}, (tag, path)
