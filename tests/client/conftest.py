"""Client tests against real node processes on loopback, with separate homes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onionpost.client.agent import Agent
from onionpost.client.db import open_database
from onionpost.client.profiles import add_relay, create_profile
from tests.integration.relay_helpers import NodeProcess

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


@pytest.fixture
def nodes(tmp_path):
    """``nodes(name)`` -> a started NodeProcess; all stopped by PID at the end."""
    started: list[NodeProcess] = []

    def make(name: str, **config) -> NodeProcess:
        node = NodeProcess.create(tmp_path / name, **config).start()
        started.append(node)
        return node

    yield make
    for node in started:
        try:
            node.stop()
        finally:
            node.kill()


class Person:
    """A client home with one profile, used in-process (Agent) or through the CLI."""

    def __init__(self, home: Path, name: str, relays: list[NodeProcess]):
        self.home, self.name = home, name
        db = open_database(home, PASSWORD, create=True)
        profile = create_profile(db, name, name.capitalize())
        for relay in relays:
            add_relay(db, profile, str(relay.address))
        db.close()

    def agent(self) -> Agent:
        from onionpost.client.profiles import get_profile

        db = open_database(self.home, PASSWORD, create=False)
        return Agent(db, get_profile(db, self.name), timeout=10)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_cli("--home", str(self.home), *args, timeout=timeout)


def run_cli(*args: str, timeout: float = 60, password: str = PASSWORD) -> subprocess.CompletedProcess:
    env = dict(os.environ, ONIONPOST_PASSWORD=password)
    return subprocess.run(
        [sys.executable, "-m", "onionpost", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


async def close_agent(agent: Agent) -> None:
    await agent.close()
    agent.db.close()


async def connect_pair(inviter: Agent, joiner: Agent, *, via: str = "link", alias: str | None = None) -> tuple[str, str]:
    """Run invite -> connect -> accept -> profile exchange; return (inviter's alias, joiner's alias)."""
    _, link = await inviter.invite(auto_accept=True)
    joined = await joiner.connect(link, via=via, alias=alias)
    await inviter.receive(wait=0.5)
    await joiner.receive(wait=0.5)
    await inviter.receive(wait=0.5)
    [theirs] = [c for c in inviter.contacts() if c.state == "connected" and c.id == max(x.id for x in inviter.contacts())]
    mine = joiner.contact_by_id(joined.id)
    assert theirs.state == "connected" and mine.state == "connected", (theirs, mine)
    return theirs.alias, mine.alias


async def start_in_process(data_dir: Path, patch=None):
    """Serve a node data directory in this process (so a test can patch or watch it); returns the runner."""
    from aiohttp import web

    from onionpost.node.datadir import DataDir
    from onionpost.node.server import NODE_KEY, make_app
    from onionpost.node.sqlite_store import SQLiteQueueStore

    data = DataDir(data_dir)
    config = data.load_config()
    app = make_app(config, data.load_identity(), SQLiteQueueStore(data.db_path))
    if patch is not None:
        patch(app[NODE_KEY])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    return runner
