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
from onionpost.transport.retry import FIRST_BACKOFF, next_backoff

from .queues import InboundQueue, OutboundQueue


@dataclass(frozen=True)
class TrustedRelay:
    address: str
    access_key: str | None = None


@dataclass(frozen=True)
class Delivery:
    """A message the relay handed us, opened from its delivery box."""

    queue: InboundQueue
    mid: bytes
    timestamp: int
    body: bytes



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
    ):
        self.trusted = list(trusted)
        self.isolation = isolation
        self.contact_tags: dict[bytes, str] = {}
        """With ``isolation="contact"``: queue id (rid or snd) -> its contact's tag."""
        self._retry_at: dict[str, tuple[float, float]] = {}  # relay -> (next attempt, backoff)
        self._connector = connector or DirectConnector()
        self._clock = clock
        self._rng = rng
        self._timeout = timeout
        self._links: dict[str, RelayLink] = {}
        self._opening: dict[str, asyncio.Future[RelayLink]] = {}
        self._subscriptions: dict[bytes, InboundQueue] = {}
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        """Messages pushed to subscribed queues, in arrival order. Each must be ACKed."""

    # --- links -------------------------------------------------------------

    def tag_of(self, queue: InboundQueue | OutboundQueue) -> str:
        """The isolation tag (circuit, socket) a queue's commands use."""
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
            await link.close()  # so that ``resubscribe`` tries again
            raise
        self._links[key] = link
        return link

    async def close(self) -> None:
        for opening in list(self._opening.values()):
            opening.cancel()
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    # --- inbound queues ----------------------------------------------------

    async def create_queue(self, relay: TrustedRelay) -> InboundQueue:
        """NEW on ``relay``; returns the queue with its keys (not yet secured)."""
        rpub, rsec = crypto.signing_keypair(self._rng)
        dpub, dsec = crypto.dh_keypair(self._rng)
        tag = "new:" + self._rng(16).hex()
        link = await self._link(relay.address, tag)
        try:
            ids = await link.request(New(rpub, dpub, relay.access_key), None, rsec)
        finally:
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

    async def subscribe(self, queue: InboundQueue) -> None:
        """SUB: deliveries (one at a time per queue, the next after each ACK) go to ``deliveries``.

        The queue stays subscribed here even if its relay cannot be reached now:
        ``resubscribe`` tries again later.
        """
        self._subscriptions[queue.rid] = queue
        now = asyncio.get_running_loop().time()
        try:
            link = self._links.get(f"{self.tag_of(queue)}@{queue.relay}")
            if link is not None and link.is_open:
                await link.request(Subscribe(), queue.rid, queue.recipient_secret)
            else:
                await self._link(queue.relay, self.tag_of(queue))  # a new link subscribes the queues it carries
        except (LinkClosed, RelayError, OSError, asyncio.TimeoutError):
            # Back off per relay: 0.5 s, 1 s, 2 s ... up to 20 s between rounds of attempts
            # (one step per round, however many of its queues failed in it).
            next_try, delay = self._retry_at.get(queue.relay, (0.0, FIRST_BACKOFF))
            if now >= next_try:
                self._retry_at[queue.relay] = (now + delay, next_backoff(delay))
            raise
        self._retry_at.pop(queue.relay, None)

    async def resubscribe(self) -> list[Exception]:
        """Re-SUB every subscribed queue whose link has closed (relay restarted, circuit died).

        All links are reopened at once, so one unreachable relay delays no other. Returns the
        errors of queues that could not be resubscribed (tried again in a later call, once
        their relay's backoff has passed).
        """
        now = asyncio.get_running_loop().time()
        due: dict[str, InboundQueue] = {}  # one queue per link: a new link subscribes all it carries
        for queue in self._subscriptions.values():
            key = f"{self.tag_of(queue)}@{queue.relay}"
            link = self._links.get(key)
            if (link is None or not link.is_open) and now >= self._retry_at.get(queue.relay, (0.0, FIRST_BACKOFF))[0]:
                due.setdefault(key, queue)
        results = await asyncio.gather(*(self.subscribe(queue) for queue in due.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                result, (LinkClosed, RelayError, OSError, asyncio.TimeoutError)
            ):
                raise result
        return [result for result in results if isinstance(result, BaseException)]

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
            self.deliveries.put_nowait(self._open(queue, response))
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
            return
        raise NoRelayError(f"none of your relays could be reached ({last_error})" if last_error else "you have no trusted relay")

    async def _drop(self, relay: str, tag: str) -> None:
        link = self._links.pop(f"{tag}@{relay}", None)
        if link is not None:
            await link.close()
