"""Subscriptions: one subscriber per queue, one message in flight."""

from onionpost.node.subscriptions import Subscriptions
from onionpost.proto import Message

RID = b"r" * 24
M1, M2, M3 = (Message(mid=bytes([i]) * 16, box=b"box") for i in (1, 2, 3))


def test_one_subscriber_per_queue():
    subs = Subscriptions()
    assert subs.subscribe(RID, "a", None) is None
    assert subs.subscribe(RID, "a", None) is None  # again from the same session: no END
    assert subs.subscribe(RID, "b", None) == "a"
    assert subs.subscriber(RID) == "b" and len(subs) == 1
    subs.drop_session("a")
    assert subs.subscriber(RID) == "b"
    subs.drop_session("b")
    assert subs.subscriber(RID) is None and len(subs) == 0


def test_one_message_in_flight():
    subs = Subscriptions()
    subs.subscribe(RID, "a", None)
    assert subs.arrived(RID, M1) == "a"
    assert subs.arrived(RID, M2) is None  # M1 in flight
    assert subs.acked(RID, M1.mid, True, M2) == "a"
    assert subs.acked(RID, M2.mid, True, None) is None
    assert subs.arrived(RID, M3) == "a"


def test_refused_ack_of_expired_in_flight_moves_on():
    subs = Subscriptions()
    subs.subscribe(RID, "a", M1)
    assert subs.acked(RID, b"other", False, M2) is None  # a wrong mid changes nothing
    assert subs.arrived(RID, M3) is None
    assert subs.acked(RID, M1.mid, False, M2) == "a"  # M1 expired: M2 is the oldest now
    assert subs.arrived(RID, M3) is None


def test_unsubscribe_on_delete():
    subs = Subscriptions()
    subs.subscribe(RID, "a", None)
    assert subs.unsubscribe(RID) == "a"
    assert subs.unsubscribe(RID) is None
    assert subs.arrived(RID, M1) is None
    subs.drop_session("a")
