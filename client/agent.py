"""The chat agent: invitations, the connection handshake, messages, receipts, rotation.

It sits between the store (``store``), the relays (``network``) and the
end-to-end encryption (``e2e``). See docs/client.md for the flows and
docs/daemon.md for how it runs. Contact states: ``store.ContactState``.

Durability rules: a received message is committed to the database *before*
it is acknowledged to the relay (so a crash re-delivers it, and ``last_mid``
skips what was already stored); an outgoing message is encrypted once and
stored in the outbox with the new ratchet state in one transaction, then sent
(and re-sent after a failure) byte for byte. Every read-modify-write of
ratchet, chain or queue state happens inside one transaction; state read
before an ``await`` is written back only if the contact is still in the state
it was read in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from onionpost.proto import AddressError, ProtocolError, crypto, parse_node_address
from onionpost.transport import Connector, LinkClosed, RelayError
from onionpost.transport.retry import FIRST_BACKOFF, next_backoff

from . import e2e, payloads
from .connections import HELD, TRANSIENT, QueueRunner
from .db import Database
from .invitation import INVITATION_VERSION, Invitation, InvitationError, format_invitation, parse_invitation
from .network import Delivery, Network, NoRelayError, TrustedRelay
from .profiles import Profile, list_relays
from .queues import InboundQueue, OutboundQueue, new_sender_key
from .store import ChatStore, ContactRow, ContactState
from .timing import TimingPolicy

MAX_TEXT = e2e.MAX_MESSAGE_PLAINTEXT - 200  # room for the chain header and payload framing
MAX_ALIAS = 64
PROVENANCE_LABELS = {
    "qr-screen": "QR code shown on screen",
    "qr-image": "QR code read from an image",
    "link": "link (lower assurance)",
}
REQUEST_TIMEOUT = 2 * 86400
"""Seconds a connection request waits for an answer before the contact is marked failed (as Briar does)."""


class AgentError(Exception):
    """A user-facing failure: the message says what happened."""


class ContactNotFound(AgentError):
    def __init__(self, name: str, candidates: list[str] | None = None):
        self.name, self.candidates = name, candidates or []
        if self.candidates:
            super().__init__(f"{name!r} matches several contacts: {', '.join(self.candidates)}; use the exact name")
        else:
            super().__init__(f"no contact named {name!r}")


class NoRequest(AgentError):
    def __init__(self, request_id: int):
        self.request_id = request_id
        super().__init__(f"no pending request {request_id}")


class NoRelayConfigured(AgentError):
    def __init__(self):
        super().__init__("this profile has no relay yet")


@dataclass(frozen=True)
class Event:
    """Something the user should hear about; stored in the event log and sent to listeners."""

    kind: str  # docs/api.md, "Events"
    contact: str | None
    text: str
    data: dict = dataclasses.field(default_factory=dict)
    id: int = 0
    profile: str | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "profile": self.profile, "contact": self.contact, "text": self.text, **self.data}


@dataclass(frozen=True)
class Contact(ContactRow):
    """A stored contact, with its unread count."""

    unread: int = 0

    @property
    def assurance(self) -> str:
        return "verified" if self.verified else PROVENANCE_LABELS.get(self.provenance, self.provenance)

    @classmethod
    def of(cls, row: ContactRow, unread: int = 0) -> Contact:
        return cls(*dataclasses.astuple(row), unread)


class Agent(QueueRunner):
    """The chat layer: invitations, the handshake, messages, receipts, rotation (connections: QueueRunner)."""

    def __init__(
        self,
        db: Database,
        profile: Profile,
        *,
        connector: Connector | None = None,
        clock=time.time,
        rng=os.urandom,
        timeout: float = 30.0,
        isolation: str = "queue",
        timing: TimingPolicy | None = None,
    ):
        self.db = db
        self.store = ChatStore(db, profile.id)
        self.profile = profile
        self.clock = clock
        self.rng = rng
        self.timing = timing or TimingPolicy.immediate()
        relays = [TrustedRelay(r.address, r.access_key, r.operator) for r in list_relays(db, profile)]
        self.network = Network(relays, connector=connector, clock=clock, rng=rng, timeout=timeout, isolation=isolation,
                               send_link_idle=self.timing.send_idle)
        self.events: list[Event] = []
        self.listeners: list[Callable[[Event], None]] = []
        self._owners: dict[bytes, tuple[str, int]] = {}  # inbound rid -> ("invitation" | "contact", row id)
        self._keepers: dict[bytes, asyncio.Task] = {}
        self._accepting: dict[int, asyncio.Task] = {}  # request -> its automatic acceptance, retried until done
        self._wake: asyncio.Event | None = None
        self._retry_at: dict[int, tuple[float, float]] = {}  # contact -> (next attempt, backoff)
        self._relays_down: set[str] = set()
        self.last_activity = 0.0
        """Loop time at which the agent last finished some work (``receive`` waits for quiet)."""
        self._busy = 0
        self._started: asyncio.Event | None = None
        """Set once ``run`` has started a keeper for every queue (``receive`` waits for it)."""
        self._first_attempts: set[bytes] = set()
        """Queues whose first subscription (after ``run`` started) has not been answered yet."""

    def reload_relays(self) -> None:
        """The profile's trusted relays changed: use the new list for new queues and forwarding."""
        self.network.trusted = [TrustedRelay(r.address, r.access_key, r.operator)
                                for r in list_relays(self.db, self.profile)]

    async def close(self, *, spread_closes: bool = False) -> None:
        """Stop; with ``spread_closes`` each link closes at its own random time (client/timing.py)."""
        await self._cancel_background()
        await self.network.close(self.timing.close_delay if spread_closes else None)

    def _event(self, kind: str, contact: str | None, text: str, **data) -> None:
        """Log an event (in the current transaction, if any) and tell listeners once it is committed."""
        data["at"] = round(self.clock(), 3)  # when it happened here (latency measurements use it)
        event_id = self.store.add_event(kind, contact, text, data, self._now())
        event = Event(kind, contact, text, data, event_id, self.profile.name)
        self.store.after_commit(lambda: self._publish(event))

    def _publish(self, event: Event) -> None:
        self.events.append(event)
        for listener in list(self.listeners):
            listener(event)

    def _now(self) -> int:
        return int(self.clock())

    # --- invitations -----------------------------------------------------------

    async def invite(self, *, auto_accept: bool = False, shared_as: str = "qr") -> tuple[int, str]:
        """Create an inbound queue and an invitation for it; return (invitation id, link)."""
        relay = self._pick_relay()
        inbound = await self._network_call(self.network.create_queue(relay), relay.address)
        secrets, keys = e2e.create_invitation(rng=self.rng)
        link = format_invitation(
            Invitation(INVITATION_VERSION, relay.address, inbound.snd, keys.identity_key, keys.ephemeral_key)
        )
        with self.store.transaction():
            invitation_id = self.store.add_invitation(
                inbound.to_bytes(), secrets.to_bytes(), link, shared_as, auto_accept, self._now()
            )
        self._watch(inbound, "invitation", invitation_id, fresh=True)
        return invitation_id, link

    def _pick_relay(self, avoid: str | None = None) -> TrustedRelay:
        """Where a new inbound queue goes: the operator holding the fewest of this profile's queues
        (a family counts as one operator), at random among equals; not ``avoid``'s operator if possible.

        So no single relay operator holds more than its share of a person's queues (docs/privacy.md).
        """
        trusted = self.network.trusted
        if not trusted:
            raise NoRelayConfigured()
        operator_of = {r.address: r.operator or r.address for r in trusted}
        held: dict[str, int] = {operator: 0 for operator in operator_of.values()}
        for queue in self.inbound_queues():
            if queue.relay in operator_of:
                held[operator_of[queue.relay]] += 1
        avoided = operator_of.get(avoid) if avoid else None
        candidates = [r for r in trusted if operator_of[r.address] != avoided] or trusted
        fewest = min(held[operator_of[r.address]] for r in candidates)
        choices = [r for r in candidates if held[operator_of[r.address]] == fewest]
        return choices[int.from_bytes(self.rng(4), "big") % len(choices)]

    def inbound_queues(self) -> list[InboundQueue]:
        queues = [InboundQueue.from_bytes(blob) for _, blob in self.store.invitation_queues()]
        for _, *blobs in self.store.live_queues():
            queues += [InboundQueue.from_bytes(blob) for blob in blobs if blob is not None]
        return queues

    def _check_invitation(self, link: str) -> Invitation:
        """Parse a link and check every key in it before anything is created."""
        try:
            invitation = parse_invitation(link)
            relay = parse_node_address(invitation.relay)
            crypto.identity_dh_public(relay.key)
            e2e.create_request(e2e.Invitation(invitation.ik, invitation.ek), b"", rng=self.rng)
        except (InvitationError, AddressError, ProtocolError, e2e.E2EError, ValueError, TypeError) as exc:
            raise AgentError(f"bad invitation: {exc}") from None
        return invitation

    async def connect(self, link: str, *, via: str, alias: str | None = None) -> Contact:
        """Join an invitation: create our reply queue and send the connection request.

        All or nothing: if the request cannot be delivered (the invitation was used up,
        its queue is gone, the relay is unreachable), nothing stays behind.
        """
        invitation = self._check_invitation(link)
        if alias is not None:
            alias = self._check_alias(alias)
        relay = self._pick_relay()
        reply = await self._network_call(self.network.create_queue(relay), relay.address)
        sender_public, sender_secret = new_sender_key(self.rng)
        request_payload = payloads.encode("request", reply=relay.address, snd=reply.snd, skey=sender_public, via=via)
        pending, request = e2e.create_request(e2e.Invitation(invitation.ik, invitation.ek), request_payload, rng=self.rng)
        outbound = OutboundQueue(invitation.relay, invitation.queue_id, sender_secret, secured=False)
        try:
            await self.network.send(outbound, request)
        except TRANSIENT as exc:
            await self._delete_quietly(reply)
            raise AgentError(f"the connection request was not delivered: {_relay_answer(exc)}") from None
        with self.store.transaction():
            contact_id = self.store.insert_contact(alias, role="joiner", state=ContactState.REQUESTED, provenance=via,
                                                   now=self._now())
            self.store.update_contact(contact_id, inbound=reply.to_bytes(), outbound=outbound.to_bytes(),
                                      handshake=pending.to_bytes())
        self._watch(reply, "contact", contact_id, fresh=True)
        return self.contact_by_id(contact_id)

    # --- requests ------------------------------------------------------------------

    def requests(self) -> list[Contact]:
        return [Contact.of(row) for row in self.store.contacts(states=(ContactState.PENDING,))]

    async def accept(self, request_id: int, *, alias: str | None = None, delay: float = 0.0) -> Contact:
        row = self._pending_request(request_id)
        if alias is not None:
            alias = self._check_alias(alias, exclude=request_id)
        inbound_blob, handshake = row
        stored = msgpack.unpackb(handshake, raw=False)
        secrets = e2e.InviterSecrets.from_bytes(stored["secrets"])
        request = e2e.open_request(secrets, stored["request"])
        details = payloads.decode(request.payload, expect={"request"})
        inbound = InboundQueue.from_bytes(inbound_blob)
        inbound = await self._network_call(self.network.secure_queue(inbound, details["skey"]), inbound.relay)
        sender_public, sender_secret = new_sender_key(self.rng)
        accept_payload = payloads.encode("accept", skey=sender_public, profile=self._my_profile())
        ratchet, accept_message = e2e.accept_request(secrets, request, accept_payload, rng=self.rng)
        outbound = OutboundQueue(details["reply"], details["snd"], sender_secret, secured=False)
        with self.store.transaction():
            accepted = self.store.update_contact(
                request_id, expect_state=ContactState.PENDING,
                alias=alias or f"contact-{request_id}", state=ContactState.ACCEPTED, inbound=inbound.to_bytes(),
                outbound=outbound.to_bytes(), handshake=None, ratchet=ratchet.to_bytes(),
                send_chain=e2e.SenderChain().to_bytes(), recv_chain=e2e.ReceiverChain().to_bytes(),
            )
            if not accepted:
                raise AgentError(f"request {request_id} was answered meanwhile")
            self._queue_outgoing(request_id, accept_message, queue=outbound, delay=delay)
        self._wake_sender()
        return self.contact_by_id(request_id)

    def _pending_request(self, request_id: int) -> tuple[bytes, bytes]:
        row = self.store.contact(request_id)
        if row is None or row.state != ContactState.PENDING:
            raise NoRequest(request_id)
        return self.store.contact_fields(request_id, "inbound", "handshake")

    async def reject(self, request_id: int) -> None:
        inbound_blob, _ = self._pending_request(request_id)
        with self.store.transaction():
            self.store.delete_contact(request_id)
        queue = InboundQueue.from_bytes(inbound_blob)
        self._unwatch(queue)
        await self._delete_quietly(queue)

    # --- contacts -----------------------------------------------------------------

    def contacts(self) -> list[Contact]:
        self._expire_requests()
        unread = self.store.unread_counts()
        hidden = (ContactState.PENDING, ContactState.DELETED)
        return [Contact.of(row, unread.get(row.id, 0)) for row in self.store.contacts(exclude=hidden)]

    def _expire_requests(self) -> None:
        """A request nobody answered for REQUEST_TIMEOUT was rejected or lost: say so once, stop waiting."""
        expired = self.store.requested_before(self._now() - REQUEST_TIMEOUT)
        for row in expired:
            with self.store.transaction():
                if self.store.update_contact(row.id, expect_state=ContactState.REQUESTED, state=ContactState.FAILED):
                    self.store.drop_outbox(row.id)
                    self._event("failed", row.alias, f"{row.alias} did not answer your connection request within "
                                f"{REQUEST_TIMEOUT // 86400} days; it was rejected or lost (make a new invitation)",
                                reason="no_answer")
            self._stop_watching_contact(row.id)

    async def delete_contact(self, alias: str, *, history: bool = False) -> Contact:
        """Forget a contact: its queues are deleted from the relays; its messages too only with ``history``."""
        contact = self.contact(alias)
        blobs = self.store.contact_fields(contact.id, "inbound", "next_inbound")
        with self.store.transaction():
            self.store.drop_outbox(contact.id)
            if history:
                self.store.delete_contact(contact.id)
            else:
                self.store.update_contact(contact.id, state=ContactState.DELETED, inbound=None, next_inbound=None,
                                          outbound=None, handshake=None, ratchet=None, send_chain=None,
                                          recv_chain=None)
        await self._drop_queues(contact.id, blobs)
        return dataclasses.replace(contact, state=ContactState.DELETED)

    async def cancel_request(self, alias: str) -> Contact:
        """Withdraw a connection request we sent that was not answered yet."""
        contact = self.contact(alias)
        if contact.state != ContactState.REQUESTED:
            raise AgentError(f"{contact.alias} is {contact.state}: only a request still waiting for an answer can be cancelled")
        blobs = self.store.contact_fields(contact.id, "inbound", "next_inbound")
        with self.store.transaction():
            self.store.drop_outbox(contact.id)
            self.store.delete_contact(contact.id)
        await self._drop_queues(contact.id, blobs)
        return contact

    async def block(self, alias: str) -> Contact:
        """Hear nothing more from a contact: our queue for them is deleted, nothing is sent to them; history stays."""
        contact = self.contact(alias)
        blobs = self.store.contact_fields(contact.id, "inbound", "next_inbound")
        with self.store.transaction():
            self.store.drop_outbox(contact.id)
            self.store.update_contact(contact.id, state=ContactState.BLOCKED, inbound=None, next_inbound=None,
                                      outbound=None, handshake=None)
            self._event("blocked", contact.alias, f"{contact.alias} is blocked: nothing more from or to them")
        await self._drop_queues(contact.id, blobs)
        return dataclasses.replace(contact, state=ContactState.BLOCKED)

    async def _drop_queues(self, contact_id: int, blobs) -> None:
        self._stop_watching_contact(contact_id)
        for blob in blobs:
            if blob is not None:
                await self._delete_quietly(InboundQueue.from_bytes(blob))

    def contact_by_id(self, contact_id: int) -> Contact:
        return Contact.of(self.store.contact(contact_id))

    def contact(self, alias: str, *, deleted: bool = False) -> Contact:
        """The contact named ``alias``: exactly, else ignoring case when that is unambiguous
        (a deleted contact, whose history was kept, only with ``deleted``)."""
        hidden = (ContactState.PENDING,) if deleted else (ContactState.PENDING, ContactState.DELETED)
        found = [row for row in self.store.contacts_named(alias) if row.state not in hidden]
        if len(found) != 1:
            raise ContactNotFound(alias, [row.alias for row in found])
        return Contact.of(found[0])

    def _check_alias(self, alias: str, exclude: int | None = None) -> str:
        alias = alias.strip()
        if not alias or len(alias) > MAX_ALIAS or any(not c.isprintable() for c in alias):
            raise AgentError(f"an alias must be 1 to {MAX_ALIAS} printable characters")
        owner = self.store.alias_owner(alias)
        if owner is not None and owner != exclude:
            raise AgentError(f"you already have a contact named {alias!r}")
        return alias

    def _my_profile(self) -> dict:
        return {"name": self.profile.display_name, "bio": self.profile.bio}

    def history(self, alias: str, limit: int = 50, *, mark_read: bool = True) -> list[dict]:
        contact = self.contact(alias, deleted=True)
        rows = self.store.history(contact.id, limit)
        if mark_read and any(r["unread"] for r in rows):
            with self.store.transaction():
                self.store.mark_read(contact.id, max(r["id"] for r in rows))
        return rows

    def unread_messages(self) -> list[dict]:
        """Received messages never shown to the user, oldest first (with the contact's alias)."""
        return self.store.unread_messages()

    def mark_shown(self, message_ids: list[int]) -> None:
        if message_ids:
            with self.store.transaction():
                self.store.mark_messages_read(message_ids)

    def mark_read(self, alias: str) -> int:
        contact = self.contact(alias)
        with self.store.transaction():
            return self.store.mark_read(contact.id)

    def security_code(self, alias: str) -> str:
        contact = self.contact(alias)
        (ratchet,) = self.store.contact_fields(contact.id, "ratchet")
        if ratchet is None:
            raise AgentError(f"{contact.alias} is not connected yet: there is no code to compare")
        return e2e.safety_code_for_state(e2e.RatchetState.from_bytes(ratchet))

    def verify(self, alias: str, code: str) -> bool:
        """Mark ``alias`` verified if ``code`` matches; return whether it did.

        A malformed or incomplete code is an error, not a mismatch: a typo must not raise the alarm.
        """
        digits = "".join(ch for ch in code if ch not in " \t\r\n-._")
        if len(digits) != 60 or not (digits.isascii() and digits.isdigit()):
            raise AgentError("that is not a complete code (12 groups of 5 digits); check it and type it again")
        contact = self.contact(alias)
        expected = self.security_code(alias)
        if not e2e.codes_match(expected, code):
            return False
        with self.store.transaction():
            self.store.update_contact(contact.id, verified=1)
            if not contact.verified:
                self._event("verified", contact.alias, f"{contact.alias} is verified: the security codes match")
        return True

    # --- sending -------------------------------------------------------------------

    async def send(self, alias: str, text: str) -> dict:
        """Encrypt the message and put it in the outbox; return its row. Delivery goes on in the background."""
        contact = self.contact(alias)
        if contact.state not in (ContactState.CONNECTED, ContactState.ACCEPTED):
            raise AgentError(f"{contact.alias} is not connected yet (state: {contact.state})")
        if not text.strip():
            raise AgentError("the message is empty")
        if len(text.encode()) > MAX_TEXT:
            raise AgentError(f"message too long: at most {MAX_TEXT} bytes")
        now = self._now()
        with self.store.transaction():
            message_id = self.store.add_outgoing_message(contact.id, text, now)
            seq = self._queue_chat(contact.id, payloads.encode("msg", text=text, ts=now), message_id=message_id)
            self.store.set_message_seq(message_id, seq)
        self._wake_sender()
        return {"id": message_id, "contact": contact.alias, "seq": seq, "text": text, "state": "pending"}

    def message_state(self, message_id: int) -> str | None:
        return self.store.message_state(message_id)

    def _queue_chat(self, contact_id: int, payload: bytes, *, message_id: int | None = None,
                    queue: OutboundQueue | None = None, delay: float | None = 0.0) -> int:
        """Chain, encrypt and store one payload in the outbox. Call it inside a transaction: the
        ratchet and chain are read and written back in it, so no two messages share a message key."""
        assert self.db.in_transaction, "_queue_chat must run inside a transaction"
        ratchet_blob, chain_blob = self.store.contact_fields(contact_id, "ratchet", "send_chain")
        chain, chained = e2e.SenderChain.from_bytes(chain_blob).next_message(payload)
        ratchet, ciphertext = e2e.ratchet_encrypt(e2e.RatchetState.from_bytes(ratchet_blob), chained, rng=self.rng)
        self.store.update_contact(contact_id, ratchet=ratchet.to_bytes(), send_chain=chain.to_bytes())
        self._queue_outgoing(contact_id, ciphertext, message_id=message_id, queue=queue, delay=delay)
        return chain.last_seq

    def _queue_outgoing(self, contact_id: int, body: bytes, *, message_id: int | None = None,
                        queue: OutboundQueue | None = None, delay: float | None = 0.0) -> None:
        """Store one SEND body; ``delay`` seconds before it may leave, None to hold it for the next user message.

        A user message releases every held or delayed row of its contact before it (they ride with it),
        so the contact's messages stay in order.
        """
        now = self.clock()
        if message_id is not None and delay is not None:
            delay += self.timing.send_wait()
        if delay is None:
            not_before = HELD
        elif self.timing.batch > 0:
            not_before = self.timing.release_at(now + delay)
        else:
            not_before = now + delay if delay > 0 else 0.0
        if message_id is not None:
            self.store.release_outbox(contact_id, not_before)
        self.store.add_outbox(contact_id, body, now=self._now(), message_id=message_id,
                              queue=queue.to_bytes() if queue else None, not_before=not_before,
                              automatic=message_id is None)

    def _queue_cover(self, contact_id: int) -> None:
        """One cover message: through the ratchet like any message, padded alike; the contact drops it unseen."""
        with self.store.transaction():
            self._queue_chat(contact_id, payloads.encode("cover"))

    async def _handle(self, delivery: Delivery) -> None:
        owner = self._owners.get(delivery.queue.rid)
        if owner is None:
            return
        kind, row_id = owner
        if kind == "invitation":
            await self._handle_request(row_id, delivery)
            return
        row = self.store.contact_fields(row_id, "state", "last_mid", "alias")
        if row is None:
            await self.network.ack(delivery.queue, delivery.mid)
            return
        state, last_mid, alias = row
        if last_mid == delivery.mid:  # stored before a crash, not yet acknowledged
            await self.network.ack(delivery.queue, delivery.mid)
            return
        if state == ContactState.REQUESTED:
            await self._handle_accept(row_id, alias, delivery)
        else:
            await self._handle_ratchet_message(row_id, delivery)

    async def _handle_request(self, invitation_id: int, delivery: Delivery) -> None:
        invitation = self.store.invitation(invitation_id)
        if invitation is None:
            await self.network.ack(delivery.queue, delivery.mid)
            return
        secrets_blob, shared_as, auto_accept, inbound_blob = invitation
        secrets = e2e.InviterSecrets.from_bytes(secrets_blob)
        try:
            request = e2e.open_request(secrets, delivery.body)
            details = payloads.decode(request.payload, expect={"request"})
            parse_node_address(details["reply"])
        except (e2e.E2EError, payloads.PayloadError, AddressError) as exc:
            self._event(
                "warning", None,
                f"refused a connection request for invitation {invitation_id}: {exc}. "
                "Someone may have tampered with it; make a new invitation and share it in person if you can.",
            )
            await self.network.ack(delivery.queue, delivery.mid)
            return
        provenance = "qr-screen" if shared_as == "qr" and details["via"] == "qr-image" else "link"
        with self.store.transaction():
            if self.store.invitation(invitation_id) is None:
                return  # answered meanwhile
            contact_id = self.store.insert_contact(None, role="inviter", state=ContactState.PENDING,
                                                   provenance=provenance, now=self._now())
            # The invitation's "accept automatically" goes with the request: the invitation row is gone now,
            # and a failed ACK or accept below must not leave the request waiting for a user who never answers.
            handshake = msgpack.packb({"secrets": secrets_blob, "request": delivery.body,
                                       "auto_accept": bool(auto_accept)}, use_bin_type=True)
            self.store.update_contact(contact_id, inbound=inbound_blob, handshake=handshake, last_mid=delivery.mid)
            self.store.delete_invitation(invitation_id)
            self._event("request", f"request-{contact_id}",
                        f"connection request {contact_id} (via {PROVENANCE_LABELS[provenance]})", request=contact_id)
        self._owners[delivery.queue.rid] = ("contact", contact_id)
        if auto_accept:
            self._accept_in_background(contact_id)
        await self.network.ack(delivery.queue, delivery.mid)

    def _resume_auto_accepts(self) -> None:
        """Accept, in the background, every request whose invitation said so and that is still pending."""
        for contact in self.requests():
            _, handshake = self.store.contact_fields(contact.id, "inbound", "handshake")
            if handshake is not None and msgpack.unpackb(handshake, raw=False).get("auto_accept"):
                self._accept_in_background(contact.id)

    def _accept_in_background(self, request_id: int) -> None:
        if self._wake is not None and request_id not in self._accepting:  # only while running
            self._accepting[request_id] = asyncio.create_task(self._auto_accept(request_id))

    async def _auto_accept(self, request_id: int) -> None:
        """Accept a request automatically; while its relay cannot be reached, again after a backoff."""
        backoff = FIRST_BACKOFF
        try:
            while True:
                try:
                    with self._working():
                        contact = await self.accept(request_id, delay=self.timing.automatic_wait())
                except NoRequest:
                    return  # accepted, rejected or expired meanwhile
                except (AgentError, *TRANSIENT) as exc:
                    self._event("warning", f"request-{request_id}",
                                f"could not accept request {request_id} automatically yet ({exc}); trying again")
                    await asyncio.sleep(backoff)
                    backoff = next_backoff(backoff)
                    continue
                self._event("accepted", contact.alias, f"accepted request {request_id} automatically",
                            request=request_id)
                return
        finally:
            if self._accepting.get(request_id) is asyncio.current_task():
                del self._accepting[request_id]

    async def _handle_accept(self, contact_id: int, alias: str, delivery: Delivery) -> None:
        handshake, inbound_blob, outbound_blob = self.store.contact_fields(contact_id, "handshake", "inbound", "outbound")
        pending = e2e.JoinerPending.from_bytes(handshake)
        try:
            ratchet, plain = e2e.complete_join(pending, delivery.body, rng=self.rng)
            accept = payloads.decode(plain, expect={"accept"})
        except (e2e.E2EError, payloads.PayloadError) as exc:
            self._event("warning", alias, f"the answer to your connection request failed: {exc}")
            await self.network.ack(delivery.queue, delivery.mid)
            return
        inbound = await self.network.secure_queue(InboundQueue.from_bytes(inbound_blob), accept["skey"])
        outbound = dataclasses.replace(OutboundQueue.from_bytes(outbound_blob), secured=True)
        profile = accept["profile"]
        with self.store.transaction():
            connected = self.store.update_contact(
                contact_id, expect_state=ContactState.REQUESTED,
                state=ContactState.CONNECTED, display_name=profile["name"], bio=profile["bio"],
                inbound=inbound.to_bytes(), outbound=outbound.to_bytes(), handshake=None, ratchet=ratchet.to_bytes(),
                send_chain=e2e.SenderChain().to_bytes(), recv_chain=e2e.ReceiverChain().to_bytes(), last_mid=delivery.mid,
            )
            if connected:
                self._queue_chat(contact_id, payloads.encode("profile", profile=self._my_profile()),
                                 delay=self.timing.automatic_wait())
                alias = self._adopt_display_name(contact_id, alias, profile["name"])
                self._event("connected", alias, f"connected to {alias} ({profile['name']})")
        await self.network.ack(delivery.queue, delivery.mid)

    def _adopt_display_name(self, contact_id: int, alias: str, display_name: str) -> str:
        """Rename a contact still under its default alias to its display name, if free."""
        if not alias.startswith(("contact-", "request-")):
            return alias
        try:
            new_alias = self._check_alias(display_name, exclude=contact_id)
        except AgentError:
            return alias
        self.store.update_contact(contact_id, alias=new_alias)
        return new_alias

    async def _handle_ratchet_message(self, contact_id: int, delivery: Delivery) -> None:
        after_commit: list = []
        with self.store.transaction():
            # Read, decrypt and write back in one transaction: nothing can change the ratchet in between.
            state, alias, ratchet_blob, chain_blob = self.store.contact_fields(
                contact_id, "state", "alias", "ratchet", "recv_chain")
            try:
                ratchet, plain = e2e.ratchet_decrypt(e2e.RatchetState.from_bytes(ratchet_blob), delivery.body, rng=self.rng)
                chain, verdict, body = e2e.ReceiverChain.from_bytes(chain_blob).receive(plain)
                payload = payloads.decode(body)
            except e2e.ReplayError:
                pass  # a duplicate of a message we already have
            except (e2e.E2EError, payloads.PayloadError) as exc:
                self._event("warning", alias, f"a message from {alias} could not be read and was dropped: {exc}")
            else:
                self.store.update_contact(contact_id, ratchet=ratchet.to_bytes(), recv_chain=chain.to_bytes(),
                                          last_mid=delivery.mid)
                if verdict.verdict is not e2e.Verdict.DUPLICATE:
                    seq = e2e.decode_message(plain)[0].seq
                    self._apply(contact_id, alias, state, seq, payload, verdict, delivery, after_commit)
        await self.network.ack(delivery.queue, delivery.mid)
        for action in after_commit:
            await action()

    def _apply(self, contact_id, alias, state, seq, payload, verdict, delivery, after_commit) -> None:
        """Apply one decrypted payload inside the receiving transaction."""
        notice = None if verdict.verdict is e2e.Verdict.OK else f"{verdict.verdict.value}: {verdict.detail}"
        if notice:
            self._event("warning", alias, f"message from {alias}: {notice}")
        kind = payload.kind
        if kind == "profile":
            self.store.update_contact(contact_id, display_name=payload["profile"]["name"], bio=payload["profile"]["bio"])
            if state == ContactState.ACCEPTED:
                (outbound,) = self.store.contact_fields(contact_id, "outbound")
                secured = dataclasses.replace(OutboundQueue.from_bytes(outbound), secured=True)
                self.store.update_contact(contact_id, state=ContactState.CONNECTED, outbound=secured.to_bytes())
                alias = self._adopt_display_name(contact_id, alias, payload["profile"]["name"])
                self._event("connected", alias, f"connected to {alias} ({payload['profile']['name']})")
        elif kind == "msg":
            message_id = self.store.add_incoming_message(contact_id, seq, payload["text"], notice, delivery.timestamp)
            if message_id is not None:
                self._event("message", alias, payload["text"], message=message_id, seq=seq, time=delivery.timestamp)
                if self.timing.receipts != "off":
                    self._queue_chat(contact_id, payloads.encode("rcpt", seq=seq), delay=self.timing.receipt_wait())
        elif kind == "rcpt":
            message = self.store.mark_delivered(contact_id, payload["seq"])
            if message is not None:
                self._event("delivered", alias, f"delivered to {alias}: {_preview(message['text'])}",
                            message=message["id"], seq=payload["seq"], sent=message["time"])
        elif kind == "qnew":
            self._switch_outbound(contact_id, payload)
            self._event("rotated", alias, f"{alias} moved your messages to a new queue")
        elif kind == "cover":
            pass  # cover traffic: nothing to show, store or acknowledge beyond the relay's ACK
        elif kind == "qdone":
            after_commit.append(lambda: self._retire_old_inbound(contact_id, alias))

    # --- rotation ------------------------------------------------------------------

    async def rotate(self, alias: str) -> str:
        """Move the contact's messages to us onto a fresh queue (new ids and keys, another relay if we have one).

        Steps (docs/client.md, "Rotation"): we create and secure the new queue and
        send ``qnew`` (with its sender key) over the old one; the contact sends
        ``qdone`` as its last message on the old queue and writes to the new one
        from then on; on ``qdone`` we delete the old queue. Nothing in flight is lost.
        """
        contact = self.contact(alias)
        if contact.state != ContactState.CONNECTED:
            raise AgentError(f"{contact.alias} is not connected yet (state: {contact.state})")
        inbound_blob, next_inbound = self.store.contact_fields(contact.id, "inbound", "next_inbound")
        if next_inbound is not None:
            raise AgentError(f"a rotation with {contact.alias} is already under way")
        current = InboundQueue.from_bytes(inbound_blob)
        relay = self._pick_relay(avoid=current.relay)
        fresh = await self._network_call(self.network.create_queue(relay), relay.address)
        sender_public, sender_secret = new_sender_key(self.rng)
        fresh = await self._network_call(self.network.secure_queue(fresh, sender_public), relay.address)
        with self.store.transaction():
            (next_inbound,) = self.store.contact_fields(contact.id, "next_inbound")
            started = next_inbound is None
            if started:
                self.store.update_contact(contact.id, next_inbound=fresh.to_bytes())
                self._queue_chat(contact.id, payloads.encode("qnew", relay=relay.address, snd=fresh.snd, skey=sender_secret))
        if not started:
            await self._delete_quietly(fresh)
            raise AgentError(f"a rotation with {contact.alias} is already under way")
        self._watch(fresh, "contact", contact.id, fresh=True)
        self._wake_sender()
        return relay.address

    def _switch_outbound(self, contact_id: int, payload) -> None:
        (old_blob,) = self.store.contact_fields(contact_id, "outbound")
        old = OutboundQueue.from_bytes(old_blob)
        try:
            parse_node_address(payload["relay"])
            new = OutboundQueue(payload["relay"], payload["snd"], payload["skey"], secured=True)
        except (AddressError, TypeError, ValueError):
            return
        self._queue_chat(contact_id, payloads.encode("qdone"), queue=old, delay=self.timing.automatic_wait())
        self.store.update_contact(contact_id, outbound=new.to_bytes())

    async def _retire_old_inbound(self, contact_id: int, alias: str) -> None:
        with self.store.transaction():
            row = self.store.contact_fields(contact_id, "inbound", "next_inbound")
            if row is None or row[1] is None:
                return
            old = InboundQueue.from_bytes(row[0])
            self.store.update_contact(contact_id, inbound=row[1], next_inbound=None)
            self._event("rotated", alias, f"the connection with {alias} now uses a new queue")
        self._unwatch(old)
        await self._delete_quietly(old)

    # --- helpers ---------------------------------------------------------------------

    async def _network_call(self, call, relay: str):
        try:
            return await call
        except RelayError as exc:
            raise AgentError(f"relay refused: {exc}") from exc
        except (LinkClosed, NoRelayError, OSError, asyncio.TimeoutError) as exc:
            raise AgentError(f"cannot reach relay {relay}: {exc or type(exc).__name__}") from None


def _preview(text: str, length: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= length else text[: length - 1] + "…")


def _relay_answer(exc: BaseException) -> str:
    if isinstance(exc, RelayError):
        meaning = {
            "NO_QUEUE": "the invitation's queue does not exist (it was used or withdrawn)",
            "LIMIT": "the invitation was already answered as often as it allows",
            "UNREACHABLE": "the inviter's relay cannot be reached",
            "AUTH": "the invitation's queue no longer takes requests",
        }.get(exc.code)
        return f"{meaning} ({exc.code})" if meaning else f"the relay refused: {exc}"
    return f"no relay could be reached ({exc or type(exc).__name__})"
