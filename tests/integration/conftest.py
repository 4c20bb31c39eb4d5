"""Fixtures: node processes on free loopback ports, stopped by PID, logs checked afterwards."""

import pytest

from tests.integration.relay_helpers import NodeProcess


def _finish(nodes: list[NodeProcess]) -> None:
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

    def make(name: str = "node", *, start: bool = True, access_keys: tuple[str, ...] = (), **config) -> NodeProcess:
        node = NodeProcess.create(tmp_path / name, access_keys=access_keys, **config)
        nodes.append(node)
        return node.start() if start else node

    yield make
    _finish(nodes)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One node for a whole test module (default configuration)."""
    node = NodeProcess.create(tmp_path_factory.mktemp("shared") / "node").start()
    yield node
    _finish([node])
