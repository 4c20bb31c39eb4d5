"""One .onion for two backends (Onionbalance) on the private Tor network.

Two backends (``node init --onion --backend-of``) behind one frontend (``--balanced``):
clients use the master address only; the master descriptor carries introduction
points of both backends; when one backend is killed, clients reach the master
address again, served by the other.

The first test gives each backend its own store, so only new queues are followed
across the kill. The second shares one PostgreSQL between the backends (any
backend serves any queue): Alice and Bob talk through the master address, a
backend is killed mid-conversation, and every message arrives, exactly once.
"""

import asyncio
import os
import re
import signal
import time

import pytest

from tests.pg_helpers import PostgresCluster
from tests.tor.balance_helpers import balanced_node, conversation_survives_backend_kill, new_queue, node_status
from tests.tor.tor_helpers import assert_all_stopped
from onionpost.torconfig import TorError, process
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.onion_keys import onion_address_of_key

pytestmark = [pytest.mark.tor, pytest.mark.timeout(900)]
SPREAD_DEADLINE = 240.0
RECONNECT_DEADLINE = 240.0
ATTEMPT_TIMEOUT = 30.0


def instance_address(backend) -> str:
    return onion_address_of_key((backend.data / "onion.key").read_bytes())


def queues(backend) -> int:
    return node_status(backend.data)["queues"]


async def intro_points(control: TorControl, address: str, deadline: float) -> set[str]:
    while True:
        try:
            return await control.intro_point_keys(address)
        except TorError:
            if time.monotonic() > deadline:
                raise
        # tor asks an HSDir for one onion at most every 15 minutes; NEWNYM forgets which it asked.
        await control.new_identity()


async def test_two_backends_behind_one_onion_and_one_killed(tor_network, client_tor, tmp_path):
    with balanced_node(tor_network.directory, tmp_path) as node:
        print(f"\nmaster descriptor published {node.published_after:.1f} s after the frontend started")
        status = node_status(node.backends[0].data)
        assert status["address"] == node.address and status["instance"] == instance_address(node.backends[0])

        # The master descriptor holds introduction points of both backends, and only theirs.
        control = await TorControl.connect(client_tor.control_port, cookie_path=client_tor.control_cookie_path)
        try:
            deadline = time.monotonic() + SPREAD_DEADLINE
            while True:
                await control.new_identity()
                master = await intro_points(control, node.master, deadline)
                own = [await intro_points(control, instance_address(b), deadline) for b in node.backends]
                print(f"intro points: master {len(master)}, of backend 1 {len(master & own[0])} of {len(own[0])}, "
                      f"of backend 2 {len(master & own[1])} of {len(own[1])}")
                if master <= own[0] | own[1] and master & own[0] and master & own[1] or time.monotonic() > deadline:
                    break
            assert master & own[0] and master & own[1], "intro points of both backends in the master descriptor"
            assert master <= own[0] | own[1]
        finally:
            await control.close()

        # Clients reach the master address (each new_queue is a client of its own, on a new circuit);
        # each introduction goes to either backend, at random.
        deadline = time.monotonic() + SPREAD_DEADLINE
        attempts = 0
        while min(counts := [queues(b) for b in node.backends]) == 0 and time.monotonic() < deadline:
            await asyncio.gather(*(new_queue(node.address, client_tor.socks_port) for _ in range(2)))
            attempts += 2
        assert min(counts) > 0, f"after {attempts} new queues, queues per backend: {counts}"
        print(f"{attempts} queues through the master address spread over both backends: {counts}")

        # One backend dies (SIGKILL; its tor exits with it): the master address is served by the other.
        # Half the master descriptor's intro points now lead nowhere; a client that tries one fails
        # and, as the client does, tries again on a new circuit.
        victim, survivor = node.backends
        before = queues(survivor)
        killed = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        took = [await queue_until_served(node.address, client_tor.socks_port, killed + RECONNECT_DEADLINE)]
        print(f"a client reached the master address {took[0][0]:.1f} s after a backend was killed "
              f"({len(took[0][1])} failed attempts)")
        for _ in range(3):  # and keeps reaching it, whichever intro point it tries
            took.append(await queue_until_served(node.address, client_tor.socks_port, time.monotonic() + RECONNECT_DEADLINE))
        print("next connections: " + ", ".join(f"{t:.1f} s ({len(failed)} failed)" for t, failed in took[1:]))
        assert queues(survivor) == before + len(took)
        assert node.frontend.proc.poll() is None and survivor.proc.poll() is None

        # A frontend killed by PID leaves neither its Onionbalance nor its tor behind.
        log = (node.frontend.data.parent / f"{node.frontend.data.name}.log").read_text()
        balancer = int(re.search(r"onionbalance \(pid (\d+)\)", log)[1])
        tors = process.tor_pids_under(node.frontend.data / "tor")
        assert tors and process.pid_alive(balancer)
        os.kill(node.frontend.proc.pid, signal.SIGKILL)
        assert_all_stopped([balancer, *tors], timeout=30)


async def queue_until_served(address: str, socks_port: int, deadline: float) -> tuple[float, list[str]]:
    """Create a queue through ``address``, retrying on fresh circuits as a client does; (seconds, failures)."""
    started = time.monotonic()
    failures: list[str] = []
    while True:
        try:
            await new_queue(address, socks_port, timeout=ATTEMPT_TIMEOUT)
            return time.monotonic() - started, failures
        except Exception as exc:  # noqa: BLE001 (a client retries whatever failed)
            failures.append(f"{type(exc).__name__}: {exc}")
            assert time.monotonic() < deadline, f"no connection to {address}: {failures[-3:]}"


async def test_backends_sharing_one_postgresql_keep_a_conversation_through_a_backend_kill(tor_network, tmp_path):
    """The issue's test: two backends on one PostgreSQL behind one .onion; one is killed mid-conversation;
    both people reach the master address again and every message arrives once, in order."""
    with PostgresCluster(fsync=False) as cluster:
        shared = ("--store", cluster.url("balanced_relay"))
        with balanced_node(tor_network.directory, tmp_path / "relay", backend_args=shared) as node:
            took = await conversation_survives_backend_kill(node, tmp_path / "homes", tor_network.directory,
                                                            within=RECONNECT_DEADLINE)
            print(f"\nall messages delivered {took:.1f} s after backend 1 was killed")
