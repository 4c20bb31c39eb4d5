"""Helpers for the tor tests: skipping without tor, process checks, HTTP over SOCKS."""

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp_socks import ProxyConnector, ProxyType

from onionpost.torconfig import process
from onionpost.torconfig.launch import TorProcess
from onionpost.torconfig.testnet import PrivateTorNetwork


def require_tor() -> None:
    """Skip the test unless tor and tor-gencert are installed."""
    if not (shutil.which("tor") or Path("/usr/sbin/tor").exists()) or not shutil.which("tor-gencert"):
        pytest.skip("tor and tor-gencert are not installed")


def assert_all_stopped(pids: list[int], timeout: float = 0.0) -> None:
    """Fail if any of these processes is still alive (after up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if process.pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"tor processes still alive: {alive}"


def socks_session(client: TorProcess, credentials: tuple[str, str]) -> ClientSession:
    """An aiohttp session whose connections go through tor with these SOCKS credentials."""
    username, password = credentials
    connector = ProxyConnector(proxy_type=ProxyType.SOCKS5, host="127.0.0.1", port=client.socks_port,
                               username=username, password=password, rdns=True)
    return ClientSession(connector=connector, timeout=ClientTimeout(total=60))


async def fetch(session: ClientSession, url: str) -> str:
    """GET ``url`` and return the body."""
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.text()


@contextmanager
def private_network(directory: Path) -> Iterator[PrivateTorNetwork]:
    """A running private network (3 authorities + the default relays), stopped by PID afterwards."""
    require_tor()
    network = PrivateTorNetwork(directory)
    try:
        network.up()
        yield network
    finally:
        pids = [node["pid"] for node in network.status()["nodes"]]
        network.down()
        assert_all_stopped(pids)
