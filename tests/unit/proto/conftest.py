import pytest

from onionpost.proto import NEED_DATA, ClientSession, NodeSession, crypto
from onionpost.proto.testing import DeterministicRng


def drain(session) -> list:
    events = []
    while (event := session.next_event()) is not NEED_DATA:
        events.append(event)
    return events


class Pair:
    """A node session and a client session joined by a fake link (h11's ConnectionPair)."""

    def __init__(self, seed: bytes = b"pair", chunk: int | None = None):
        rng = DeterministicRng(seed)
        self.node_public, self.node_secret = crypto.signing_keypair(rng)
        self.node = NodeSession(self.node_public, self.node_secret, rng=rng)
        self.client = ClientSession(self.node_public, rng=rng)
        self.chunk = chunk

    def feed(self, session, data: bytes) -> list:
        events = []
        step = self.chunk or max(len(data), 1)
        for start in range(0, len(data), step):
            session.receive_data(data[start : start + step])
            events += drain(session)
        return events

    def handshake(self) -> tuple[list, list]:
        client_events = self.feed(self.client, self.node.data_to_send())
        node_events = self.feed(self.node, self.client.data_to_send())
        client_events += self.feed(self.client, self.node.data_to_send())
        return node_events, client_events

    def to_node(self, commands) -> list:
        data, _ = self.client.send(commands)
        return self.feed(self.node, data)

    def to_client(self, replies) -> list:
        return self.feed(self.client, self.node.send(replies))


@pytest.fixture
def pair() -> Pair:
    p = Pair()
    p.handshake()
    return p
