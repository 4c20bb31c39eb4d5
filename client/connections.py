"""Keeping queues connected and the outbox moving: the agent's connection layer (docs/daemon.md).

``QueueRunner`` is the half of the agent that talks to relays on a schedule:
one keeper task per inbound queue (client/timing.py decides when its link
opens, reopens and is replaced), a background sender that empties the outbox
(each row not before its time, retried with backoff per contact), and the
loop that hands each delivery to the chat layer (``Agent._handle`` in
client/agent.py) one at a time. It keeps no chat logic: what a delivery means
is the agent's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from onionpost.proto import parse_node_address
from onionpost.transport import LinkClosed, RelayError
from onionpost.transport.retry import FIRST_BACKOFF, next_backoff

from .network import Delivery, NoRelayError
from .queues import InboundQueue, OutboundQueue
from .store import ContactState
from .tor import TorUnavailable

if TYPE_CHECKING:
    from .agent import Event

HELD = 9e15
"""``not_before`` of an outbox row held for the next message the user sends (receipts="next")."""
TRANSIENT = (LinkClosed, RelayError, NoRelayError, OSError, asyncio.TimeoutError, TorUnavailable)
"""Failures the background loops retry: tor that could not start (yet) included, as a relay that is down."""
SETTLE = 0.5
"""Seconds of quiet after which ``receive`` takes it that nothing more is waiting."""
HANDLED_WAIT = 10.0
"""Most seconds a queue's link stays past its lifetime for a delivery in hand to be acknowledged."""
COVER_CHECK = 5.0
"""Seconds between looks for new contacts that need cover traffic."""
FINAL_CODES = ("NO_QUEUE",)
"""Relay answers that no retry can change: the queue is gone."""


def _stopping() -> bool:
    """Whether this task was asked to stop (a cancellation an inner ``wait_for`` swallowed still counts)."""
    return asyncio.current_task().cancelling() > 0


class QueueRunner:
    """Mixed into ``Agent``; uses its store, network, timing, clock and event log."""

    def _touch(self) -> None:
        self.last_activity = asyncio.get_running_loop().time()

    @contextlib.contextmanager
    def _working(self):
        """Mark work in progress (a delivery handled, a send, a subscription): ``receive`` does not stop during it."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._touch()

    @property
    def idle_for(self) -> float:
        """Seconds since the agent last worked; 0 while it works."""
        return 0.0 if self._busy else asyncio.get_running_loop().time() - self.last_activity


    async def _delete_quietly(self, queue: InboundQueue) -> None:
        try:  # the queue is useless now; deleting it is a courtesy to the relay
            await self.network.delete_queue(queue)
        except TRANSIENT:
            pass


    def watched(self) -> list[bytes]:
        """The inbound queues (rids) this agent keeps subscribed."""
        return list(self._owners)

    def _wake_sender(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def flush(self, contact_id: int | None = None, *, due_only: bool = True) -> float | None:
        """Send what is due in the outbox, oldest first per contact; stop at a contact's first failure.

        Contacts go at once (each in its own order): an unreachable relay delays no other contact.
        Returns the clock time at which the next row becomes due (or its contact may retry), or None.
        """
        rows = self.store.outbox(contact_id)
        by_contact: dict[int, list] = {}
        for row in rows:
            by_contact.setdefault(row.contact_id, []).append(row)
        results = await asyncio.gather(*(self._flush_contact(r, due_only) for r in by_contact.values()))
        due = [t for t in results if t is not None]
        return min(due) if due else None

    async def _flush_contact(self, rows: list, due_only: bool) -> float | None:
        contact_id = rows[0].contact_id
        now = self.clock()
        retry_at, _ = self._retry_at.get(contact_id, (0.0, FIRST_BACKOFF))
        if due_only and retry_at > now:
            return retry_at
        for row in rows:
            if row.queue is None and row.state != ContactState.CONNECTED:
                return None  # chat waits until the contact has secured its queue
            if due_only and row.not_before > now:
                return row.not_before if row.not_before < HELD else None
            queue = OutboundQueue.from_bytes(row.queue or row.outbound)
            with self._working():
                try:
                    await self.network.send(queue, row.body)
                except TRANSIENT as exc:
                    return self._send_failed(row, exc)
                self._retry_at.pop(contact_id, None)
                with self.store.transaction():
                    self.store.outbox_sent(row.id)
                    if row.message_id is not None and self.store.mark_sent(row.message_id):
                        self._event("sent", row.alias, f"message {row.message_id} to {row.alias} left for their relay",
                                    message=row.message_id)
        return None

    def _send_failed(self, row, exc: BaseException) -> float | None:
        if isinstance(exc, RelayError) and exc.code in FINAL_CODES:
            with self.store.transaction():
                self.store.drop_outbox(row.contact_id)
                self.store.fail_pending_messages(row.contact_id)
                self.store.update_contact(row.contact_id, state=ContactState.FAILED)
                self._event("failed", row.alias,
                            f"{row.alias}: the relay says their queue does not exist ({exc}); nothing more will be sent",
                            reason=exc.code)
            self._stop_watching_contact(row.contact_id)
            return None
        with self.store.transaction():
            self.store.outbox_failed(row.id, str(exc))
        now = self.clock()
        _, backoff = self._retry_at.get(row.contact_id, (0.0, FIRST_BACKOFF))
        self._retry_at[row.contact_id] = (now + backoff, next_backoff(backoff))
        if isinstance(exc, RelayError) and not exc.retry_later:
            self._event("warning", row.alias, f"the relay refused a message to {row.alias}: {exc}")
        return now + backoff

    # --- receiving -----------------------------------------------------------------

    async def receive(self, wait: float = 0.0) -> list[Event]:
        """Fetch everything waiting (every queue subscribed once, every delivery handled, what is due sent),
        then keep listening until ``wait`` seconds pass without news; return the events of that time."""
        start = len(self.events)
        self._touch()
        self._started = asyncio.Event()
        runner = asyncio.create_task(self.run())
        try:
            await asyncio.wait({runner, asyncio.ensure_future(self._started.wait())}, return_when=asyncio.FIRST_COMPLETED)
            while not runner.done():
                quiet = self.idle_for
                settled = not self._first_attempts and self.network.deliveries.empty() and not self._sending_soon()
                # The relay pushes a queue's next message right after the ACK of the previous one, but it may
                # arrive in the next block: SETTLE seconds of quiet before "nothing more to fetch".
                if quiet >= max(wait, SETTLE) and settled:
                    break
                await asyncio.wait({runner}, timeout=max(0.05, min(max(wait, SETTLE) - quiet, 0.25)))
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            raise runner.exception()
        await self.flush()
        return self.events[start:]

    def _sending_soon(self) -> bool:
        """Whether a delayed outbox row (an accept, a profile; not a held receipt) still waits for its time."""
        return self.store.next_delayed(self.clock(), HELD) is not None

    async def run(self) -> None:
        """Keep every inbound queue subscribed, handle deliveries, send the outbox; until cancelled."""
        self._wake = asyncio.Event()
        self._expire_requests()
        now = self.clock()
        for row in self.store.outbox():  # after a start, each contact's backlog leaves at its own time
            if row.contact_id not in self._retry_at:
                self._retry_at[row.contact_id] = (now + self.timing.open_delay(urgent=True), FIRST_BACKOFF)
        sender = asyncio.create_task(self._send_loop())
        cover = asyncio.create_task(self._cover_loop()) if self.timing.cover_rate > 0 else None
        try:
            with self._working():
                self._watch_all()
                self._resume_auto_accepts()  # requests a failed link or a restart left unanswered
                await asyncio.sleep(0)  # let the keepers start (and mark themselves busy)
            if self._started is not None:
                self._started.set()
            while not _stopping():
                delivery = await self.network.deliveries.get()
                with self._working():
                    try:
                        await self._handle_safely(delivery)
                    finally:
                        self.network.handled(delivery)
                    self._watch_all()  # handling may have created or replaced queues
                self._wake_sender()
        finally:
            for task in (sender, cover):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (sender, cover) if t is not None), return_exceptions=True)
            await self._cancel_background()
            self._first_attempts.clear()
            self._wake = None

    async def _send_loop(self) -> None:
        while not _stopping():
            self._wake.clear()
            next_due = await self.flush()
            timeout = None if next_due is None else max(0.0, next_due - self.clock())
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                # that arrives as the wait ends, and this loop would then never stop.
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _cover_loop(self, sleep=asyncio.sleep) -> None:
        """Cover traffic (client/timing.py): each connected contact gets dummy messages on its own random schedule.

        ``sleep`` is injected (tests pair it with a fake ``clock``)."""
        next_at: dict[int, float] = {}
        while not _stopping():
            now = self.clock()
            connected = self.store.connected_contacts()
            for contact_id in list(next_at):
                if contact_id not in connected:
                    del next_at[contact_id]
            for contact_id in connected:
                if contact_id not in next_at:
                    next_at[contact_id] = now + self.timing.cover_gap(first=True)
                elif next_at[contact_id] <= now:
                    if contact_id not in self._retry_at:  # its relay answers: no pile of cover in the outbox
                        self._queue_cover(contact_id)
                    # The schedule keeps its own rhythm, but a daemon that was asleep does not catch up in a burst.
                    next_at[contact_id] = max(next_at[contact_id] + self.timing.cover_gap(), now)
            self._wake_sender()
            # New contacts are picked up within COVER_CHECK seconds.
            wait = min([t - now for t in next_at.values()] + [COVER_CHECK])
            await sleep(max(0.0, wait))

    async def _handle_safely(self, delivery: Delivery) -> None:
        try:
            await self._handle(delivery)
        except TRANSIENT as exc:
            # Not acknowledged: the relay delivers it again once the link is back.
            self._event("warning", None, f"will retry a message: {exc}")
            await self.network.drop_link(delivery.queue)

    def _watch_all(self) -> None:
        self.network.load_contact_tags(self._contact_tags())
        for invitation_id, blob in self.store.invitation_queues():
            self._watch(InboundQueue.from_bytes(blob), "invitation", invitation_id)
        for contact_id, *blobs in self.store.live_queues():
            for blob in blobs:
                if blob is not None:
                    self._watch(InboundQueue.from_bytes(blob), "contact", contact_id)

    def _contact_tags(self) -> dict[bytes, str]:
        tags = {}
        for contact_id, _alias, *blobs in self.store.queue_blobs():
            for blob, kind in zip(blobs, (InboundQueue, InboundQueue, OutboundQueue)):
                if blob is not None:
                    queue = kind.from_bytes(blob)
                    tags[queue.rid if kind is InboundQueue else queue.snd] = f"contact:{contact_id}"
        return tags

    def _watch(self, queue: InboundQueue, kind: str, row_id: int, *, fresh: bool = False) -> None:
        """Own ``queue`` and, while ``run`` is going, keep it subscribed on its own schedule.

        A ``fresh`` queue (just created by the user's invite, connect or rotate) subscribes at once:
        its first subscription follows the user's action, not the other queues' rhythm.
        """
        self._owners[queue.rid] = (kind, row_id)
        if self._wake is None or queue.rid in self._keepers:
            return
        if fresh:
            delay = 0.0
        else:
            delay = self.timing.open_delay(urgent=kind == "contact" and bool(self.store.outbox(row_id)))
        self._first_attempts.add(queue.rid)
        self._keepers[queue.rid] = asyncio.create_task(self._keep(queue, delay))

    def _unwatch(self, queue: InboundQueue) -> None:
        self._owners.pop(queue.rid, None)
        self.network.unsubscribe(queue)
        self._first_attempts.discard(queue.rid)
        keeper = self._keepers.pop(queue.rid, None)
        if keeper is not None and keeper is not asyncio.current_task():
            keeper.cancel()

    def _stop_watching_contact(self, contact_id: int) -> None:
        for rid, owner in list(self._owners.items()):
            if owner == ("contact", contact_id):
                queue = self.network.subscribed(rid)
                self._owners.pop(rid, None)
                self._first_attempts.discard(rid)
                keeper = self._keepers.pop(rid, None)
                if keeper is not None:
                    keeper.cancel()
                if queue is not None:
                    self.network.unsubscribe(queue)

    async def _cancel_background(self) -> None:
        """Cancel every queue's keeper and every automatic accept, and wait for them to end."""
        tasks = [*self._keepers.values(), *self._accepting.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._keepers.clear()
        self._accepting.clear()

    async def _until_handled(self, queue: InboundQueue, most: float) -> None:
        """Wait (at most ``most`` seconds) until no delivery of ``queue`` is in hand."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + most
        while self.network.in_hand(queue.rid) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def _keep(self, queue: InboundQueue, delay: float) -> None:
        """One queue's life (client/timing.py): open at its own random time, reopen after its own delay."""
        await asyncio.sleep(delay)
        backoff = FIRST_BACKOFF
        while queue.rid in self._owners and not _stopping():
            try:
                with self._working():
                    try:
                        link = await self.network.subscribe(queue)
                    finally:
                        self._first_attempts.discard(queue.rid)
            except TRANSIENT as exc:
                self._relay_down(queue.relay, exc)
                await asyncio.sleep(backoff + self.timing.reopen_delay())
                backoff = next_backoff(backoff)
                continue
            except Exception as exc:  # noqa: BLE001 - a keeper that died would leave its queue unread until a restart
                self._event("warning", None, f"could not open a queue's link ({type(exc).__name__}: {exc}); trying again")
                await asyncio.sleep(backoff + self.timing.reopen_delay())
                backoff = next_backoff(backoff)
                continue
            backoff = FIRST_BACKOFF
            self._relay_up(queue.relay)
            lifetime = self.timing.lifetime()
            try:
                async with asyncio.timeout(lifetime):
                    await link.wait_closed()
            except TimeoutError:
                gap = self.timing.gap()
                if gap is not None:  # presence: closed for a gap of its own, then a new link (client/timing.py)
                    # A delivery still in hand ACKs over this link: closing first would make the ACK open a
                    # new link inside the gap (renewing the subscription), and the gap would not show.
                    await self._until_handled(queue, HANDLED_WAIT)
                    await self.network.drop_link(queue)
                    await asyncio.sleep(gap)
                    continue
                try:
                    await self.network.renew_link(queue)  # the new link subscribes before the old one closes
                except TRANSIENT:
                    pass  # the old link stays; the next round subscribes again
                continue
            # The link dropped (relay restart, network change): every queue's link dropped with it,
            # so each reopens at its own random time, not all at once.
            await asyncio.sleep(self.timing.reopen_delay())

    def _relay_down(self, relay: str, exc: BaseException) -> None:
        if relay not in self._relays_down:
            self._relays_down.add(relay)
            self._event("relay_down", None, f"cannot reach relay {parse_node_address(relay).host}: {exc}", relay=relay)

    def _relay_up(self, relay: str) -> None:
        if relay in self._relays_down:
            self._relays_down.discard(relay)
            self._event("relay_up", None, f"relay {parse_node_address(relay).host} is reachable again", relay=relay)

    def queue_tags(self) -> list[dict]:
        """Each of our queues with the isolation tag its traffic uses (for showing circuits)."""
        self.network.load_contact_tags(self._contact_tags())
        rows = []
        for _id, alias, inbound, _next, outbound in self.store.queue_blobs(states=(ContactState.CONNECTED,)):
            for blob, kind, direction in ((inbound, InboundQueue, "from"), (outbound, OutboundQueue, "to")):
                if blob is not None:
                    queue = kind.from_bytes(blob)
                    rows.append({"contact": alias, "direction": direction, "relay": queue.relay,
                                 "tag": self.network.tag_of(queue)})
        return rows
