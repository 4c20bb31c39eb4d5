"""NodeTor publishes its onion service again when clients cannot find its descriptor (fake control, no tor)."""

import asyncio
import logging

from onionpost.node.datadir import DataDir
from onionpost.node.onion import SELF_CHECK_FAILURES, NodeTor, TorOptions
from onionpost.torconfig.errors import TorError
from onionpost.torconfig.onion_keys import onion_address_of_key

SEED = bytes(range(32))


class FakeControl:
    """Records what the node asks of tor; ``findable`` answers the descriptor checks in turn."""

    def __init__(self, findable: list):
        self.findable = list(findable)
        self.calls: list[str] = []

    async def descriptor_findable(self, address):
        self.calls.append("check")
        answer = self.findable.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def remove_onion(self, address):
        self.calls.append("remove")

    async def publish_onion(self, key, port_map, await_publication=True, *, timeout=0, **options):
        self.calls.append("publish")
        return onion_address_of_key(key)


def published_node(tmp_path, control: FakeControl) -> NodeTor:
    tor = NodeTor(DataDir(tmp_path), SEED, 80, ("127.0.0.1", 4000), TorOptions(), asyncio.Event(), progress=None)
    tor.control, tor.published = control, True
    return tor


async def test_service_is_published_again_after_failed_checks_in_a_row(tmp_path, caplog):
    control = FakeControl([True, False, True, False, False, True])
    tor = published_node(tmp_path, control)
    with caplog.at_level(logging.WARNING, logger="onionpost.node.onion"):
        for _ in range(6):
            await tor._check_findable()  # noqa: SLF001
    assert SELF_CHECK_FAILURES == 2
    assert control.calls == ["check", "check", "check", "check", "check", "remove", "publish", "check"]
    assert tor.published and tor.state == "published"
    assert "cannot find onion service" in caplog.text and tor.onion in caplog.text


async def test_a_check_that_cannot_run_or_tell_counts_as_nothing(tmp_path):
    control = FakeControl([False, TorError("control connection lost"), None, False])
    tor = published_node(tmp_path, control)
    for _ in range(4):
        await tor._check_findable()  # noqa: SLF001
    assert control.calls == ["check", "check", "check", "check", "remove", "publish"]


async def test_no_check_before_the_service_is_published(tmp_path):
    control = FakeControl([])
    tor = published_node(tmp_path, control)
    tor.published = False
    await tor._check_findable()  # noqa: SLF001
    assert control.calls == []
