"""One .onion for two backends (Onionbalance) on the private Tor network.

Two backends (``node init --onion --backend-of``) behind one frontend (``--balanced``):
clients use the master address only; the master descriptor carries introduction
points of both backends; when one backend is killed, clients reach the master
address again, served by the other.

Each backend has its own store here, so only new queues are followed across the
kill. Follow-up once backends share one store (issue 14, PostgreSQL): start
``balanced_node(..., backend_args=("--store", URL))``, connect Alice and Bob
through the master address (``workflow_helpers.connect_pair`` on
``make_homes`` with the master address for both), kill a backend mid-traffic and
check with ``settle_until`` that every message arrives, exactly once.
"""

import os
import signal
import time

import pytest

from tests.tor.balance_helpers import balanced_node, new_queue, node_status
from onionpost.torconfig import TorError
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.onion_keys import onion_address_of_key

pytestmark = [pytest.mark.tor, pytest.mark.timeout(900)]
SPREAD_DEADLINE = 240.0
RECONNECT_DEADLINE = 240.0


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

        # Two clients reach the master address; each new circuit is introduced to either backend.
        deadline = time.monotonic() + SPREAD_DEADLINE
        attempts = 0
        while min(counts := [queues(b) for b in node.backends]) == 0 and time.monotonic() < deadline:
            for client in ("alice", "bob"):
                await new_queue(node.address, client_tor.socks_port)
                attempts += 1
        assert min(counts) > 0, f"after {attempts} new queues, queues per backend: {counts}"
        print(f"{attempts} queues through the master address spread over both backends: {counts}")

        # One backend dies (SIGKILL; its tor exits with it): the master address is served by the other.
        victim, survivor = node.backends
        before = queues(survivor)
        killed = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        failures = []
        while True:
            try:
                await new_queue(node.address, client_tor.socks_port)
                break
            except Exception as exc:  # noqa: BLE001 (a client retries whatever failed)
                failures.append(f"{type(exc).__name__}: {exc}")
                assert time.monotonic() - killed < RECONNECT_DEADLINE, f"no connection since the kill: {failures[-3:]}"
        reconnected = time.monotonic() - killed
        assert queues(survivor) == before + 1
        print(f"a client reached the master address {reconnected:.1f} s after a backend was killed "
              f"({len(failures)} failed attempts)")
        for _ in range(3):  # and keeps reaching it, whichever intro point it tries
            await new_queue(node.address, client_tor.socks_port)
        assert queues(survivor) == before + 4
        assert node.frontend.proc.poll() is None and survivor.proc.poll() is None
