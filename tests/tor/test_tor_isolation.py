"""IsolateSOCKSAuth: one circuit per SOCKS username/password, proved through the control port."""

import os

import pytest

from tests.tor.tor_helpers import fetch, socks_session
from onionpost.torconfig.socks import isolation_credentials

pytestmark = pytest.mark.tor


@pytest.mark.timeout(120)
async def test_credentials_choose_the_circuit(client_tor, client_control, host_control, web_port):
    address = await host_control.publish_onion(os.urandom(32), {80: web_port})
    queue_a, queue_b = isolation_credentials("queue-a"), isolation_credentials("queue-b")
    streams = {}  # request name -> its stream (the one that appeared with it)
    # Sessions stay open, so each request's keep-alive stream stays listed.
    async with socks_session(client_tor, queue_a) as a1, socks_session(client_tor, queue_b) as b, \
            socks_session(client_tor, queue_a) as a2:
        for name, session in (("a1", a1), ("b", b), ("a2", a2)):
            before = {s.id for s in await client_control.streams()}
            assert await fetch(session, f"http://{address}/{name}") == f"hello {name}"
            (streams[name],) = [s for s in await client_control.streams() if s.id not in before]
        circuits = {c.id: c for c in await client_control.circuits()}

    assert streams["a1"].circuit_id == streams["a2"].circuit_id != streams["b"].circuit_id
    assert len({s.source_port for s in streams.values()}) == 3 and all(s.source_port for s in streams.values())
    for name, credentials in (("a1", queue_a), ("b", queue_b)):
        assert streams[name].target == f"{address}:80"
        circuit = circuits[streams[name].circuit_id]
        assert (circuit.socks_username, circuit.socks_password) == credentials
        assert circuit.purpose == "HS_CLIENT_REND" and len(circuit.path) >= 3
    await host_control.remove_onion(address)
