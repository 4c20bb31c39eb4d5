"""The client's side of the relay protocol: one link per queue, sends through our own relays.

Every queue (inbound or outbound) gets its own ``RelayLink`` (its own socket,
and over Tor its own circuit, named by the queue's isolation tag). A send to a
queue on one of our trusted relays goes directly; a send to any other relay is
sealed for that relay and forwarded by one of ours (docs/protocol/relay.md,
"Forwarding").
"""

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from onionpost.proto import (
    Ack,
    Delete,
    Forward,
    ForwardResult,
    Get,
    Message,
    New,
    NoMessage,
    Ok,
    QueueIds,
    SecureQueue,
    Send,
    Subscribe,
    crypto,
    forward,
    parse_node_address,
)
from onionpost.proto.delivery import open_message
from onionpost.proto.frames import Error, SubscriptionEnded
from onionpost.transport import Connector, DirectConnector, LinkClosed, RelayError, RelayLink

from .queues import InboundQueue, OutboundQueue


@dataclass(frozen=True)
class TrustedRelay:
    address: str
    access_key: str | None = None
    operator: str = ""
    """Relays with the same operator (a family) count as one when queues are spread."""


@dataclass(frozen=True)
class Delivery:
    """A message the relay handed us, opened from its delivery box."""

    queue: InboundQueue
    mid: bytes
    timestamp: int
    body: bytes



SHARED_TAG = "shared"
"""With ``isolation="shared"`` (a lab baseline): the one tag of every command, queue creation included."""


class NoRelayError(Exception):
    """None of our trusted relays could be used."""


class Network:
    def __init__(
        self,
        trusted: list[TrustedRelay],
        *,
        connector: Connector | None = None,
        clock: Callable[[], float] = time.time,
        rng=os.urandom,
        timeout: float = 30.0,
        isolation: str = "queue",
        send_link_idle: Callable[[], float | None] | None = None,
    ):
        self.trusted = list(trusted)
        self.isolation = isolation
        self.send_link_idle = send_link_idle
        """Seconds a link used only for sending stays open after its last send (drawn per send); None: no limit."""
        self._idle_closes: dict[str, asyncio.TimerHandle] = {}
        self.contact_tags: dict[bytes, str] = {}
        """With ``isolation="contact"``: queue id (rid or snd) -> its contact's tag."""
        self._connector = connector or DirectConnector()
        self._clock = clock
        self._rng = rng
        self._timeout = timeout
        self._links: dict[str, RelayLink] = {}
        self._opening: dict[str, asyncio.Future[RelayLink]] = {}
        self._subscriptions: dict[bytes, InboundQueue] = {}
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        """Messages pushed to subscribed queues, in arrival order. Each must be ACKed."""
        self._in_hand: dict[bytes, int] = {}  # rid -> deliveries pushed and not yet handled

    # --- links -------------------------------------------------------------

    def tag_of(self, queue: InboundQueue | OutboundQueue) -> str:
        """The isolation tag (circuit, socket) a queue's commands use."""
        if self.isolation == "shared":
            return SHARED_TAG
        if self.isolation == "profile":
            return "profile"
        if self.isolation == "contact":
            key = queue.rid if isinstance(queue, InboundQueue) else queue.snd
            return self.contact_tags.get(key, queue.tag)
        return queue.tag

    async def _link(self, relay: str, tag: str) -> RelayLink:
        key = f"{tag}@{relay}"
        link = self._links.get(key)
        if link is not None and link.is_open:
            return link
        opening = self._opening.get(key)
        if opening is None:  # one connection attempt per link, however many commands wait for it
            opening = self._opening[key] = asyncio.ensure_future(self._open_link(relay, tag, key))
            opening.add_done_callback(lambda done: self._opened(key, done))
        return await asyncio.shield(opening)

    def _opened(self, key: str, done: asyncio.Future) -> None:
        if self._opening.get(key) is done:
            del self._opening[key]
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every waiter was cancelled

    async def _open_link(self, relay: str, tag: str, key: str) -> RelayLink:
        link = await RelayLink.connect(
            parse_node_address(relay), connector=self._connector, isolation=tag, on_push=self._on_push, timeout=self._timeout
        )
        # A replaced link starts with no subscription: renew those of the queues it carries,
        # whatever command made us reopen it (an ACK, a GET...), or their pushes would stop.
        try:
            for queue in list(self._subscriptions.values()):
                if queue.relay == relay and self.tag_of(queue) == tag:
                    await link.request(Subscribe(), queue.rid, queue.recipient_secret, timeout=self._timeout)
        except BaseException:
            await link.close()  # so that the queue's keeper tries again
            raise
        self._links[key] = link
        return link

    async def close(self, delays: Callable[[], float] | None = None) -> None:
        """Close every link; with ``delays``, each after its own delay (so a relay does not see
        one person's sessions all end at the same instant, docs/privacy.md)."""
        for opening in list(self._opening.values()):
            opening.cancel()
        for timer in self._idle_closes.values():
            timer.cancel()
        self._idle_closes.clear()
        links, self._links = list(self._links.values()), {}

        async def close(link: RelayLink, delay: float) -> None:
            if delay > 0:
                await asyncio.sleep(delay)
            await link.close()

        await asyncio.gather(*(close(link, delays() if delays else 0.0) for link in links), return_exceptions=True)

    # --- inbound queues ----------------------------------------------------

    async def create_queue(self, relay: TrustedRelay) -> InboundQueue:
        """NEW on ``relay``; returns the queue with its keys (not yet secured)."""
        rpub, rsec = crypto.signing_keypair(self._rng)
        dpub, dsec = crypto.dh_keypair(self._rng)
        tag = SHARED_TAG if self.isolation == "shared" else "new:" + self._rng(16).hex()
        link = await self._link(relay.address, tag)
        try:
            ids = await link.request(New(rpub, dpub, relay.access_key), None, rsec)
        finally:
            if tag != SHARED_TAG:  # the shared link carries everything else too
                await self._drop(relay.address, tag)
        assert isinstance(ids, QueueIds)
        return InboundQueue(relay.address, ids.rid, ids.snd, rsec, crypto.queue_secret(dsec, ids.dhkey))

    async def secure_queue(self, queue: InboundQueue, sender_public: bytes) -> InboundQueue:
        link = await self._link(queue.relay, self.tag_of(queue))
        await link.request(SecureQueue(sender_public), queue.rid, queue.recipient_secret)
        return InboundQueue(queue.relay, queue.rid, queue.snd, queue.recipient_secret, queue.queue_key, sender_public)

    async def delete_queue(self, queue: InboundQueue) -> None:
        link = await self._link(queue.relay, self.tag_of(queue))
        await link.request(Delete(), queue.rid, queue.recipient_secret)
        await self._drop(queue.relay, self.tag_of(queue))

    async def get(self, queue: InboundQueue) -> Delivery | None:
        link = await self._link(queue.relay, self.tag_of(queue))
        response = await link.request(Get(), queue.rid, queue.recipient_secret)
        if isinstance(response, NoMessage):
            return None
        return self._open(queue, response)

    def set_connector(self, connector: Connector) -> None:
        """Use ``connector`` (e.g. tor, once started) for links opened from now on."""
        self._connector = connector

    def load_contact_tags(self, tags: dict[bytes, str]) -> None:
        """With ``isolation="contact"``: which contact's tag each queue (rid or snd) uses."""
        if self.isolation == "contact":
            self.contact_tags.update(tags)

    def subscribed(self, rid: bytes) -> InboundQueue | None:
        return self._subscriptions.get(rid)

    async def subscribe(self, queue: InboundQueue) -> RelayLink:
        """SUB: deliveries (one at a time per queue, the next after each ACK) go to ``deliveries``.

        Returns the link now carrying the subscription (``link.wait_closed()`` tells when it
        ends). The queue stays subscribed here even if its relay cannot be reached now:
        a reopened link renews the subscriptions it carries.
        """
        self._subscriptions[queue.rid] = queue
        link = self._links.get(self._key(queue.relay, self.tag_of(queue)))
        if link is not None and link.is_open:
            await link.request(Subscribe(), queue.rid, queue.recipient_secret, timeout=self._timeout)
            return link
        return await self._link(queue.relay, self.tag_of(queue))  # a new link subscribes the queues it carries

    async def renew_link(self, queue: InboundQueue) -> RelayLink:
        """Replace the link carrying ``queue``: the new one subscribes first (the relay then ends the
        old subscription), then the old one closes, so no delivery waits for a gap."""
        key = self._key(queue.relay, self.tag_of(queue))
        old = self._links.pop(key, None)
        try:
            link = await self._link(queue.relay, self.tag_of(queue))
        except BaseException:
            if old is not None and key not in self._links:
                self._links[key] = old
            raise
        if old is not None:
            await old.close()
        return link

    async def drop_link(self, queue: InboundQueue) -> None:
        """Close the link carrying ``queue`` (its keeper reopens it, which renews the subscription)."""
        await self._drop(queue.relay, self.tag_of(queue))

    @staticmethod
    def _key(relay: str, tag: str) -> str:
        return f"{tag}@{relay}"

    def handled(self, delivery: Delivery) -> None:
        """The consumer of ``deliveries`` is done with ``delivery`` (acknowledged, or left to come again)."""
        rid = delivery.queue.rid
        left = self._in_hand.get(rid, 0) - 1
        if left > 0:
            self._in_hand[rid] = left
        else:
            self._in_hand.pop(rid, None)

    def in_hand(self, rid: bytes) -> bool:
        """Whether a delivery of this queue waits in ``deliveries`` or is being handled (its ACK not sent)."""
        return rid in self._in_hand

    def unsubscribe(self, queue: InboundQueue) -> None:
        self._subscriptions.pop(queue.rid, None)

    async def ack(self, queue: InboundQueue, mid: bytes) -> None:
        link = await self._link(queue.relay, self.tag_of(queue))
        try:
            await link.request(Ack(mid), queue.rid, queue.recipient_secret)
        except RelayError as exc:
            if exc.code != "NO_MSG":  # already acknowledged (e.g. before a crash)
                raise

    def _open(self, queue: InboundQueue, message: Message) -> Delivery:
        timestamp, body = open_message(queue.queue_key, message.box)
        return Delivery(queue, message.mid, timestamp, body)

    async def _on_push(self, rid: bytes | None, response) -> None:
        queue = self._subscriptions.get(rid) if rid else None
        if queue is None:
            return
        if isinstance(response, Message):
            # Queued, not handled here: handling ACKs over this link, whose reader is us.
            delivery = self._open(queue, response)
            self._in_hand[rid] = self._in_hand.get(rid, 0) + 1
            self.deliveries.put_nowait(delivery)
        elif isinstance(response, SubscriptionEnded):
            self._subscriptions.pop(rid, None)

    # --- outbound queues -----------------------------------------------------

    async def send(self, queue: OutboundQueue, body: bytes) -> None:
        """Deliver ``body`` to ``queue``: directly if its relay is ours, else forwarded by ours.

        Raises:
            RelayError: the (destination) relay refused; ``retry_later`` says if it is worth retrying.
            LinkClosed / NoRelayError: no relay could be reached; the message stays pending.
        """
        key = queue.sender_secret if queue.secured else None
        # Protocol 1.1: the same token in every retry of this body, so a relay that stored it answers OK again.
        send = Send(body, tok=crypto.send_token(body, key or queue.snd))
        if any(r.address == queue.relay for r in self.trusted):
            link = await self._link(queue.relay, self.tag_of(queue))
            await link.request(send, queue.snd, key)
            self._close_when_idle(queue.relay, self.tag_of(queue))
            return
        destination = parse_node_address(queue.relay)
        envelope, response_key = forward.seal_send(destination.key, queue.snd, send, key, int(self._clock()), self._rng)
        last_error: Exception | None = None
        for relay in self.trusted:
            try:
                link = await self._link(relay.address, self.tag_of(queue))
                result = await link.request(Forward(queue.relay, envelope))
            except LinkClosed as exc:
                last_error = exc
                continue
            assert isinstance(result, ForwardResult)
            answer = forward.open_response(response_key, result.env)
            if isinstance(answer, Error):
                raise RelayError(answer.code, answer.detail)
            assert isinstance(answer, Ok)
            self._close_when_idle(relay.address, self.tag_of(queue))
            return
        raise NoRelayError(f"none of your relays could be reached ({last_error})" if last_error else "you have no trusted relay")

    def _close_when_idle(self, relay: str, tag: str) -> None:
        """A link that only sends closes after its own random idle time (client/timing.py), not with the others."""
        key = self._key(relay, tag)
        idle = self.send_link_idle() if self.send_link_idle else None
        if idle is None or any(self._key(q.relay, self.tag_of(q)) == key for q in self._subscriptions.values()):
            return
        previous = self._idle_closes.pop(key, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._idle_closes[key] = loop.call_later(idle, lambda: loop.create_task(self._drop(relay, tag)))

    async def _drop(self, relay: str, tag: str) -> None:
        timer = self._idle_closes.pop(self._key(relay, tag), None)
        if timer is not None:
            timer.cancel()
        link = self._links.pop(f"{tag}@{relay}", None)
        if link is not None:
            await link.close()
