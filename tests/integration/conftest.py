"""Fixtures: node processes on free loopback ports, stopped by PID, logs checked afterwards."""

import itertools

import pytest

from tests.integration.relay_helpers import NodeProcess
from tests.pg_helpers import PostgresCluster

STORES = ("sqlite", "postgresql")
_databases = itertools.count(1)


def finish(nodes: list[NodeProcess]) -> None:
    statuses = []
    for node in nodes:
        try:
            statuses.append(node.stop())
        finally:
            node.kill()
    for node, status in zip(nodes, statuses):
        assert status == 0, f"node exited with {status}: {node.log_text()[-2000:]}"
        node.check_log()


@pytest.fixture
def node_factory(tmp_path):
    """``make(name, **node_json_overrides)`` -> a started ``NodeProcess``; all are stopped and checked at the end."""
    nodes: list[NodeProcess] = []

    def make(name: str = "node", *, start: bool = True, access_keys: tuple[str, ...] = (), store: str | None = None,
             **config) -> NodeProcess:
        node = NodeProcess.create(tmp_path / name, access_keys=access_keys, store=store, **config)
        nodes.append(node)
        return node.start() if start else node

    yield make
    finish(nodes)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One node for a whole test module (default configuration)."""
    node = NodeProcess.create(tmp_path_factory.mktemp("shared") / "node").start()
    yield node
    finish([node])


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session (tests.pg_helpers); a missing PostgreSQL fails, never skips."""
    cluster = PostgresCluster(fsync=False).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=STORES)
def store_url(request):
    """Run the test on each store: None (the default SQLite file) or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_cluster").url(f"node{next(_databases)}")
