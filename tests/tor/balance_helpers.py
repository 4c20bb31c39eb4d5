"""A balanced onionpost node on the private network: one Onionbalance frontend and its backends.

``balanced_node`` takes the backends' extra ``node init`` arguments: today each backend has its
own SQLite store; once backends can share one (``--store postgresql://...``, issue 14), passing it
here gives the follow-up test (a conversation through the master address survives a backend kill)
the same setup.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from onionpost.client.network import Network, TrustedRelay
from onionpost.demo import RelayProcess
from onionpost.transport.tor import TorConnector

PUBLISH_DEADLINE = 240.0


@dataclass
class BalancedNode:
    frontend: RelayProcess
    backends: list[RelayProcess]
    address: str
    """What clients use: onionpost://KEY@MASTER.onion:80."""
    published_after: float
    """Seconds from the frontend's start to its first accepted master descriptor upload."""

    @property
    def master(self) -> str:
        return self.address.rsplit("@", 1)[1].rsplit(":", 1)[0]


def node_status(data: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "onionpost", "node", "status", "--data", str(data), "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


@contextmanager
def balanced_node(testnet: Path, base: Path, backends: int = 2,
                  backend_args: Sequence[str] = ()) -> Iterator[BalancedNode]:
    """Start ``backends`` backends, then the frontend; stop all of them by PID afterwards.

    ``backend_args``: more ``node init`` arguments for each backend (``--store URL``: one shared store).
    """
    front_dir = base / "frontend"
    frontend = RelayProcess(front_dir, testnet, init_args=("--onion", "--balanced"))
    started = [RelayProcess(base / f"backend-{i + 1}", testnet,
                            init_args=("--onion", "--backend-of", str(front_dir), *backend_args))
               for i in range(backends)]
    try:
        frontend.init()
        for backend in started:
            backend.init()
            backend.start()
        addresses = {backend.wait_listening() for backend in started}
        begun = time.monotonic()
        frontend.start()
        address = frontend.wait_listening(timeout=PUBLISH_DEADLINE)
        published_after = time.monotonic() - begun
        assert addresses == {address}, "every backend announces the master address, as the frontend does"
        yield BalancedNode(frontend, started, address, published_after)
    finally:
        for process in [frontend, *started]:
            process.stop()


async def new_queue(address: str, socks_port: int, timeout: float = 60.0) -> float:
    """Create a queue through ``address`` on a fresh circuit (one link: hello, then NEW); return the seconds it took.

    Raises what the client raises if the relay cannot be reached or refuses.
    """
    network = Network([TrustedRelay(address)], connector=TorConnector(socks_port=socks_port, timeout=timeout),
                      timeout=timeout)
    started = time.monotonic()
    try:
        await network.create_queue(network.trusted[0])
    finally:
        await network.close()
    return time.monotonic() - started


async def conversation_survives_backend_kill(node: BalancedNode, homes_base: Path, testnet: Path,
                                             within: float = 240.0) -> float:
    """Alice and Bob talk through the master address; a backend is SIGKILLed mid-conversation; every
    message arrives, exactly once, in order. Returns the seconds from the kill until all arrived.

    Only for backends that share one store (``balanced_node(..., backend_args=("--store", URL))``):
    with a store per backend, a queue lives on the backend that created it and a circuit introduced
    to the other finds no such queue.
    """
    from tests.tor.workflow_helpers import clients, connect_pair, make_homes, settle_until, texts

    homes = make_homes([node, node], homes_base)  # both use the master address
    assert await connect_pair(homes, testnet) == (["connected"], ["connected"])
    async with clients(homes, testnet, timeout=30) as (alice, bob):
        bob_alias = alice.agent.contacts()[0].alias
        await alice.agent.send(bob_alias, "before")
        await alice.agent.flush()
        await settle_until(lambda: texts(bob.agent, "alice", "in") == ["before"], bob.agent, alice.agent, within=within)
        victim = node.backends[0]
        killed = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        for i in range(3):
            await alice.agent.send(bob_alias, f"a{i}")
            await bob.agent.send("alice", f"b{i}")
        await alice.agent.flush()
        await bob.agent.flush()
        wanted_bob, wanted_alice = ["before"] + [f"a{i}" for i in range(3)], [f"b{i}" for i in range(3)]
        await settle_until(lambda: texts(bob.agent, "alice", "in") == wanted_bob
                           and texts(alice.agent, bob_alias, "in") == wanted_alice, bob.agent, alice.agent, within=within)
        assert texts(bob.agent, "alice", "in") == wanted_bob
        assert texts(alice.agent, bob_alias, "in") == wanted_alice
        return time.monotonic() - killed
