"""Several backends of one node on one PostgreSQL database: pushes and "one subscriber per queue" across them.

Each backend LISTENs on two channels (``node.pg_store``):

- ``onionpost_arrived``: the store NOTIFYs ``<origin> <rid>`` in the
  transaction of every stored message, so it is heard once committed. A
  backend that holds the queue's subscriber, with nothing in flight, reads the
  oldest message and pushes it (as the backend that stored it would have).
  ``<origin> <rid> deleted`` (a DEL): the backend holding its subscriber ends it (END).
- ``onionpost_subscribed``: after a SUB, the backend announces
  ``<origin> <token> <rid>``. PostgreSQL delivers notifications to every
  listener in one order, so all backends agree on which SUB came last. A
  backend ends its own subscription (END) when another backend's announcement
  arrives after its own announcement came back; one still on its way back
  was made later than what arrives first, and wins.

A backend that loses its listening connection reconnects and re-reads the
oldest message of every subscribed queue with nothing in flight (it may have
missed an announcement meanwhile). Queue ids in the payloads are those the
database already holds; nothing else about sessions leaves the process.
"""

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable

from onionpost.proto import Message, SubscriptionEnded

from .pg_store import ARRIVED_CHANNEL, SUBSCRIBED_CHANNEL, display_url
from .store import StoreError
from .subscriptions import Subscriptions

log = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class ClusterSubscriptions(Subscriptions):
    """``Subscriptions`` that announce every SUB and end local ones that another backend's later SUB replaced."""

    def __init__(self, origin: str, announce: Callable[[bytes, str], None] = lambda rid, token: None):
        super().__init__()
        self.origin = origin
        self.announce = announce
        self._counter = itertools.count(1)
        self._tokens: dict[bytes, list] = {}
        """rid -> [token of our last SUB, whether its announcement came back]."""
        self.missed: set[bytes] = set()
        """Queues another backend stored a message in while ours had one in flight."""
        self.on_idle: Callable[[bytes], None] = lambda rid: None
        """Called when such a queue has nothing in flight any more: its oldest message may wait for a push."""
        self._changes: dict[bytes, int] = {}
        """rid -> a count of the subscription's changes (SUB, push, ACK): a read older than a change is stale."""

    def generation(self, rid: bytes) -> int:
        return self._changes.get(rid, 0)

    def _changed(self, rid: bytes) -> None:
        self._changes[rid] = self._changes.get(rid, 0) + 1

    def subscribe(self, rid: bytes, session: Hashable, message: Message | None):
        previous = super().subscribe(rid, session, message)
        self._changed(rid)
        token = str(next(self._counter))
        self._tokens[rid] = [token, False]
        self.announce(rid, token)
        return previous

    def unsubscribe(self, rid: bytes):
        self._tokens.pop(rid, None)
        self._changed(rid)
        self.missed.discard(rid)
        return super().unsubscribe(rid)

    def drop_session(self, session: Hashable) -> None:
        for rid in self._by_session.get(session, ()):
            self._tokens.pop(rid, None)
            self._changed(rid)
            self.missed.discard(rid)
        super().drop_session(session)

    def acked(self, rid: bytes, mid: bytes, ok: bool, next_message: Message | None):
        """As ``Subscriptions.acked``; and if a message stored elsewhere was heard meanwhile, look for it now.

        (The ACK's transaction may have read the queue before that message was
        committed, and its announcement came while the acknowledged one was in flight.)
        """
        target = super().acked(rid, mid, ok, next_message)
        self._changed(rid)
        if rid in self.missed and self.waiting(rid):
            self.missed.discard(rid)
            self.on_idle(rid)
        return target

    def announced(self, rid: bytes, origin: str, token: str):
        """A SUB announcement was heard: the local subscriber it ends (it must get END), or None."""
        entry = self._tokens.get(rid)
        if entry is None:
            return None
        if origin == self.origin:
            if token == entry[0]:
                entry[1] = True
                if self.waiting(rid):  # a message stored elsewhere while the SUB read the queue was heard too early
                    self.on_idle(rid)
            return None
        if not entry[1]:
            return None  # ours is still on its way back: it came later, it wins
        return self.unsubscribe(rid)

    def arrived(self, rid: bytes, message: Message):
        target = super().arrived(rid, message)
        if target is not None:
            self._changed(rid)
        return target

    def waiting(self, rid: bytes) -> bool:
        """True if the queue's subscriber is here and has nothing in flight."""
        sub = self._by_queue.get(rid)
        return sub is not None and sub.in_flight is None

    def idle(self) -> list[bytes]:
        """Subscribed queues with nothing in flight."""
        return [rid for rid, sub in self._by_queue.items() if sub.in_flight is None]


class Cluster:
    """Listens for the other backends' messages and SUBs; ``start``/``stop`` with the node."""

    def __init__(self, url: str, origin: str, oldest: Callable[[bytes], Awaitable[Message | None]]):
        self.url = url
        self.subscriptions = ClusterSubscriptions(origin, self._announce)
        self.subscriptions.on_idle = self._look_again
        self.oldest = oldest
        """Reads a queue's oldest live message (through the committer)."""
        self._outbox: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._lookups: set[asyncio.Task] = set()
        self._reading: set[bytes] = set()
        self._listener = None
        self._announcer = None

    @property
    def origin(self) -> str:
        return self.subscriptions.origin

    async def start(self) -> None:
        """Listen (before the node accepts sessions, so no announcement is missed)."""
        import psycopg

        self._outbox = asyncio.Queue()
        try:
            listener = await self._connect(psycopg)
        except psycopg.Error as exc:
            raise StoreError(f"cannot listen on the database {display_url(self.url)}: {_reason(exc)}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(psycopg, listener)), loop.create_task(self._send_announcements(psycopg))]

    async def _connect(self, psycopg):
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
        await conn.execute(f"LISTEN {ARRIVED_CHANNEL}")
        await conn.execute(f"LISTEN {SUBSCRIBED_CHANNEL}")
        return conn

    async def stop(self) -> None:
        for task in [*self._tasks, *self._lookups]:
            task.cancel()
        for task in [*self._tasks, *self._lookups]:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def _announce(self, rid: bytes, token: str) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(f"{self.origin} {token} {rid.hex()}")

    async def _send_announcements(self, psycopg) -> None:
        """One connection sends the SUB announcements, in the order of the SUBs."""
        try:
            await self._announce_loop(psycopg)
        finally:
            if self._announcer is not None:
                await self._announcer.close()

    async def _announce_loop(self, psycopg) -> None:
        while True:
            payload = await self._outbox.get()
            for delay in (*RECONNECT_DELAYS, None):
                try:
                    if self._announcer is None or self._announcer.closed or self._announcer.broken:
                        self._announcer = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
                    await self._announcer.execute("SELECT pg_notify(%s, %s)", (SUBSCRIBED_CHANNEL, payload))
                    break
                except psycopg.Error as exc:
                    if delay is None:
                        log.error("a SUB could not be announced to the other backends: %s", _reason(exc))
                        break
                    await asyncio.sleep(delay)

    async def _listen(self, psycopg, conn) -> None:
        try:
            await self._listen_loop(psycopg, conn)
        finally:
            if self._listener is not None:
                await self._listener.close()

    async def _listen_loop(self, psycopg, conn) -> None:
        self._listener = conn
        attempt = 0
        while True:
            try:
                if conn is None:
                    conn = self._listener = await self._connect(psycopg)
                    log.info("listening to the other backends again (%s)", display_url(self.url))
                    attempt = 0
                    for rid in self.subscriptions.idle():
                        self._look_again(rid)
                async for note in conn.notifies():
                    self._heard(note.channel, note.payload)
            except psycopg.Error as exc:
                if attempt == 0:
                    log.error("lost the database connection that hears the other backends: %s", _reason(exc))
                with_delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                if conn is not None:
                    await conn.close()
                conn = None
                await asyncio.sleep(with_delay)

    def _heard(self, channel: str, payload: str) -> None:
        """Handle one notification; reads of queues go on in their own tasks, so the next notification is not held up."""
        parts = payload.split(" ")
        try:
            if channel == ARRIVED_CHANNEL and len(parts) == 2:
                if parts[0] != self.origin:
                    rid = bytes.fromhex(parts[1])
                    if self.subscriptions.subscriber(rid) is not None:
                        self._look_again(rid)
            elif channel == ARRIVED_CHANNEL and len(parts) == 3 and parts[2] == "deleted":
                if parts[0] != self.origin:  # the deleting backend ended its own subscriber already
                    rid = bytes.fromhex(parts[1])
                    subscriber = self.subscriptions.unsubscribe(rid)
                    if subscriber is not None:
                        subscriber.push(rid, SubscriptionEnded())
            elif channel == SUBSCRIBED_CHANNEL and len(parts) == 3:
                rid = bytes.fromhex(parts[2])
                ended = self.subscriptions.announced(rid, parts[0], parts[1])
                if ended is not None:
                    ended.push(rid, SubscriptionEnded())
        except ValueError:
            log.error("ignored a malformed notification on %s", channel)

    def _look_again(self, rid: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._arrived(rid))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _arrived(self, rid: bytes) -> None:
        """Another backend stored a message: push the queue's oldest if we hold its subscriber and nothing is in flight.

        One read per queue at a time; a read during which the subscription changed
        (a push, an ACK) may be stale (an acknowledged message) and is done again.
        """
        subs = self.subscriptions
        if not subs.waiting(rid) or rid in self._reading:
            if subs.subscriber(rid) is not None:
                subs.missed.add(rid)  # looked at again when the one in flight is acknowledged, or the read ends
            return
        generation = subs.generation(rid)
        self._reading.add(rid)
        try:
            message = await self.oldest(rid)
        finally:
            self._reading.discard(rid)
        if subs.generation(rid) != generation:
            message = None
            if subs.waiting(rid):
                subs.missed.add(rid)
        if message is not None:
            target = subs.arrived(rid, message)
            if target is not None:
                target.push(rid, message)
        if rid in subs.missed and subs.waiting(rid):
            subs.missed.discard(rid)
            self._look_again(rid)


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
