"""Who is subscribed to which queue, and which message is in flight (relay.md "SUB").

One subscriber session per queue, one message in flight per subscription: the
next message is pushed only after the current one is acknowledged. Lives in
the event loop, in memory: subscriptions end with their session.
"""

from dataclasses import dataclass
from typing import Hashable

from onionpost.proto import Message


@dataclass(slots=True)
class Subscription:
    subscriber: Hashable
    in_flight: bytes | None = None


class Subscriptions:
    def __init__(self) -> None:
        self._by_queue: dict[bytes, Subscription] = {}
        self._by_session: dict[Hashable, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_queue)

    def subscriber(self, rid: bytes):
        sub = self._by_queue.get(rid)
        return None if sub is None else sub.subscriber

    def subscribe(self, rid: bytes, session: Hashable, message: Message | None):
        """Make ``session`` the queue's subscriber with ``message`` in flight.

        Returns:
            The previous subscriber if it was another session (it must get END), else None.
        """
        previous = self._by_queue.get(rid)
        if previous is not None and previous.subscriber is not session:
            self._by_session[previous.subscriber].discard(rid)
        self._by_queue[rid] = Subscription(session, None if message is None else message.mid)
        self._by_session.setdefault(session, set()).add(rid)
        if previous is not None and previous.subscriber is not session:
            return previous.subscriber
        return None

    def unsubscribe(self, rid: bytes):
        """Forget the queue's subscription (queue deleted); return the subscriber or None."""
        sub = self._by_queue.pop(rid, None)
        if sub is None:
            return None
        self._by_session[sub.subscriber].discard(rid)
        return sub.subscriber

    def drop_session(self, session: Hashable) -> None:
        for rid in self._by_session.pop(session, ()):
            self._by_queue.pop(rid, None)

    def acked(self, rid: bytes, mid: bytes, ok: bool, next_message: Message | None):
        """After an ACK of ``mid``: the subscriber to push ``next_message`` to, or None.

        A successful ACK (from any session) moves the subscription on. A
        refused ACK of the in-flight message means it expired meanwhile:
        move on to the oldest live message too.
        """
        sub = self._by_queue.get(rid)
        if sub is None or not (ok or sub.in_flight == mid):
            return None
        sub.in_flight = None if next_message is None else next_message.mid
        return None if next_message is None else sub.subscriber

    def arrived(self, rid: bytes, message: Message):
        """A new message was stored: the subscriber to push it to now, or None if one is in flight."""
        sub = self._by_queue.get(rid)
        if sub is None or sub.in_flight is not None:
            return None
        sub.in_flight = message.mid
        return sub.subscriber
