"""Fixtures for tests that run real tor: ONE private network per test session."""

from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.tor.tor_helpers import assert_all_stopped, private_network
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.launch import TorProcess, start_client_and_host
from onionpost.torconfig.testnet import PrivateTorNetwork


@pytest.fixture(scope="session")
def tor_network(tmp_path_factory) -> Iterator[PrivateTorNetwork]:
    """A running 3-authority + 8-relay network, stopped by PID at session end."""
    with private_network(tmp_path_factory.mktemp("testnet")) as network:
        yield network


@pytest.fixture(scope="session")
def tors(tor_network, tmp_path_factory) -> Iterator[tuple[TorProcess, TorProcess]]:
    """(client tor with SOCKS, onion-service host tor), started in parallel."""
    base = tmp_path_factory.mktemp("tors")
    client, host = start_client_and_host(base / "client", base / "host", tor_network.directory)
    try:
        yield client, host
    finally:
        for tor in (client, host):
            tor.stop()
        assert_all_stopped([client.pid, host.pid])


@pytest.fixture(scope="session")
def client_tor(tors) -> TorProcess:
    return tors[0]


@pytest.fixture(scope="session")
def onion_host_tor(tors) -> TorProcess:
    return tors[1]


@pytest.fixture
async def client_control(client_tor):
    control = await TorControl.connect(client_tor.control_port)
    yield control
    await control.close()


@pytest.fixture
async def host_control(onion_host_tor):
    control = await TorControl.connect(onion_host_tor.control_port, cookie_path=onion_host_tor.control_cookie_path)
    yield control
    await control.close()


@pytest.fixture
async def web_port():
    """A local aiohttp server answering ``GET /<anything>`` with ``hello <anything>``."""
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.match_info['name']}")

    app = web.Application()
    app.router.add_get("/{name}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def pytest_configure(config):
    # stem 1.8 calls Thread.setDaemon(), deprecated since Python 3.10.
    config.addinivalue_line("filterwarnings", "ignore:setDaemon:DeprecationWarning:stem")
