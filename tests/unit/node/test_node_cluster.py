"""``ClusterSubscriptions``: backends agree on the last SUB of a queue from the one order PostgreSQL delivers notifications in."""

import pytest

from onionpost.node.cluster import ClusterSubscriptions

pytestmark = pytest.mark.timeout(10)

RID = b"q" * 24


class Backend:
    def __init__(self, name: str):
        self.sent: list[str] = []
        self.subs = ClusterSubscriptions(name, lambda rid, token: self.sent.append(f"{name} {token} {rid.hex()}"))
        self.ended: list[object] = []

    def hear(self, payload: str) -> None:
        origin, token, rid = payload.split(" ")
        ended = self.subs.announced(bytes.fromhex(rid), origin, token)
        if ended is not None:
            self.ended.append(ended)


def deliver(order: list[str], *backends: Backend) -> None:
    for payload in order:
        for backend in backends:
            backend.hear(payload)


def test_the_later_sub_wins_on_every_backend_whatever_the_delivery_order():
    for first_wins in (True, False):
        a, b = Backend("a"), Backend("b")
        a.subs.subscribe(RID, "session-a", None)
        b.subs.subscribe(RID, "session-b", None)  # both SUBs before either announcement comes back
        order = a.sent + b.sent if first_wins else b.sent + a.sent
        deliver(order, a, b)
        winner, loser = (b, a) if first_wins else (a, b)
        assert winner.subs.subscriber(RID) is not None and winner.ended == []
        assert loser.subs.subscriber(RID) is None and len(loser.ended) == 1


def test_a_sub_after_ours_came_back_ends_ours_and_a_resubscribe_here_is_not_ended_by_its_own_echo():
    a, b = Backend("a"), Backend("b")
    a.subs.subscribe(RID, "session-a", None)
    deliver(a.sent, a, b)
    assert a.ended == []
    b.subs.subscribe(RID, "session-b", None)
    deliver(b.sent, a, b)
    assert a.ended == ["session-a"] and a.subs.subscriber(RID) is None
    assert b.subs.subscriber(RID) == "session-b" and b.ended == []


def test_a_dropped_session_forgets_its_announcements():
    a, b = Backend("a"), Backend("b")
    a.subs.subscribe(RID, "session-a", None)
    deliver(a.sent, a)
    a.subs.drop_session("session-a")
    b.subs.subscribe(RID, "session-b", None)
    deliver(b.sent, a, b)
    assert a.ended == [] and a.subs.subscriber(RID) is None


def test_a_message_heard_while_one_was_in_flight_is_looked_for_after_the_ack():
    from onionpost.proto import Message

    a = Backend("a")
    idle: list[bytes] = []
    a.subs.on_idle = idle.append
    in_flight = Message(mid=b"m" * 16, box=b"box")
    a.subs.subscribe(RID, "session-a", in_flight)
    deliver(a.sent, a)
    assert idle == []  # something is in flight: nothing to look for
    a.subs.missed.add(RID)  # another backend stored a message meanwhile
    assert a.subs.acked(RID, in_flight.mid, True, None) is None  # the ACK's read came before that commit
    assert idle == [RID] and RID not in a.subs.missed


def test_our_own_sub_coming_back_with_nothing_in_flight_looks_again():
    a = Backend("a")
    idle: list[bytes] = []
    a.subs.on_idle = idle.append
    a.subs.subscribe(RID, "session-a", None)
    deliver(a.sent, a)
    assert idle == [RID]
