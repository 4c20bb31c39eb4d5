"""The chat agent: invitations, the connection handshake, messages, receipts, rotation.

It sits between the encrypted store (``db``), the relays (``network``) and the
end-to-end encryption (``e2e``). See docs/client.md for the flows.

Contact states::

    joiner:  requested ──(accept arrives)──> connected
    inviter: pending ──(user accepts)──> accepted ──(their profile arrives)──> connected
             pending ──(user rejects)──> (deleted)

Durability rules: a received message is committed to the database *before*
it is acknowledged to the relay (so a crash re-delivers it, and ``last_mid``
skips what was already stored); an outgoing message is encrypted once and
stored in the outbox with the new ratchet state in one transaction, then sent
(and re-sent after a failure) byte for byte.
"""

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass

import msgpack

from onionpost.proto import AddressError, parse_node_address
from onionpost.transport import Connector, LinkClosed, RelayError

from . import e2e, payloads
from .db import Database
from .invitation import INVITATION_VERSION, Invitation, InvitationError, format_invitation, parse_invitation
from .network import Delivery, Network, NoRelayError, TrustedRelay
from .profiles import Profile, list_relays
from .queues import InboundQueue, OutboundQueue, new_sender_key

MAX_TEXT = e2e.MAX_MESSAGE_PLAINTEXT - 200  # room for the chain header and payload framing
MAX_ALIAS = 64
PROVENANCE_LABELS = {
    "qr-screen": "QR code shown on screen",
    "qr-image": "QR code read from an image",
    "link": "link (lower assurance)",
}


class AgentError(Exception):
    """A user-facing failure: the message says what happened and what to do."""


@dataclass(frozen=True)
class Event:
    """Something the user should hear about, collected while the agent runs."""

    kind: str  # request, connected, message, delivered, warning, rotated, sent
    contact: str | None
    text: str
    data: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Contact:
    id: int
    alias: str
    display_name: str | None
    state: str
    role: str
    provenance: str
    verified: bool

    @property
    def assurance(self) -> str:
        return "verified" if self.verified else PROVENANCE_LABELS.get(self.provenance, self.provenance)


_CONTACT_COLUMNS = "id, alias, display_name, state, role, provenance, verified"


class Agent:
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
    ):
        self.db = db
        self.profile = profile
        self.clock = clock
        self.rng = rng
        relays = [TrustedRelay(r.address, r.access_key) for r in list_relays(db, profile)]
        self.network = Network(relays, connector=connector, clock=clock, rng=rng, timeout=timeout, isolation=isolation)
        self.events: list[Event] = []
        self._owners: dict[bytes, tuple[str, int]] = {}  # inbound rid -> ("invitation" | "contact", row id)

    async def close(self) -> None:
        await self.network.close()

    def _event(self, kind: str, contact: str | None, text: str, **data) -> None:
        self.events.append(Event(kind, contact, text, data))

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
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO invitations (profile_id, inbound, secrets, link, shared_as, auto_accept, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.profile.id, inbound.to_bytes(), secrets.to_bytes(), link, shared_as, int(auto_accept), self._now()),
            )
        return cursor.lastrowid, link

    def _pick_relay(self, avoid: str | None = None) -> TrustedRelay:
        if not self.network.trusted:
            raise AgentError("this profile has no relay yet: add one with 'onionpost relay add ADDRESS'")
        others = [r for r in self.network.trusted if r.address != avoid]
        return (others or self.network.trusted)[0]

    async def connect(self, link: str, *, via: str, alias: str | None = None) -> Contact:
        """Join an invitation: create our reply queue and send the connection request."""
        try:
            invitation = parse_invitation(link)
            parse_node_address(invitation.relay)
        except (InvitationError, AddressError) as exc:
            raise AgentError(f"bad invitation: {exc}") from None
        if alias is not None:
            alias = self._check_alias(alias)
        relay = self._pick_relay()
        reply = await self._network_call(self.network.create_queue(relay), relay.address)
        sender_public, sender_secret = new_sender_key(self.rng)
        request_payload = payloads.encode("request", reply=relay.address, snd=reply.snd, skey=sender_public, via=via)
        pending, request = e2e.create_request(
            e2e.Invitation(invitation.ik, invitation.ek), request_payload, rng=self.rng
        )
        outbound = OutboundQueue(invitation.relay, invitation.queue_id, sender_secret, secured=False)
        with self.db.transaction():
            contact_id = self._insert_contact(alias, role="joiner", state="requested", provenance=via)
            self.db.execute(
                "UPDATE contacts SET inbound = ?, outbound = ?, handshake = ? WHERE id = ?",
                (reply.to_bytes(), outbound.to_bytes(), pending.to_bytes(), contact_id),
            )
            self._queue_outgoing(contact_id, request, queue=outbound)
        await self.flush(contact_id)
        return self.contact_by_id(contact_id)

    # --- requests ------------------------------------------------------------------

    def requests(self) -> list[Contact]:
        return self._contacts("state = 'pending'")

    async def accept(self, request_id: int, *, alias: str | None = None) -> Contact:
        row = self.db.fetch_one(
            "SELECT inbound, handshake FROM contacts WHERE id = ? AND profile_id = ? AND state = 'pending'",
            (request_id, self.profile.id),
        )
        if row is None:
            raise AgentError(f"no pending request {request_id} (see 'onionpost requests')")
        if alias is not None:
            alias = self._check_alias(alias, exclude=request_id)
        stored = msgpack.unpackb(row[1], raw=False)
        secrets = e2e.InviterSecrets.from_bytes(stored["secrets"])
        request = e2e.open_request(secrets, stored["request"])
        details = payloads.decode(request.payload, expect={"request"})
        inbound = InboundQueue.from_bytes(row[0])
        inbound = await self._network_call(self.network.secure_queue(inbound, details["skey"]), inbound.relay)
        sender_public, sender_secret = new_sender_key(self.rng)
        accept_payload = payloads.encode("accept", skey=sender_public, profile=self._my_profile())
        ratchet, accept_message = e2e.accept_request(secrets, request, accept_payload, rng=self.rng)
        outbound = OutboundQueue(details["reply"], details["snd"], sender_secret, secured=False)
        with self.db.transaction():
            self.db.execute(
                "UPDATE contacts SET alias = ?, state = 'accepted', inbound = ?, outbound = ?, handshake = NULL, "
                "ratchet = ?, send_chain = ?, recv_chain = ? WHERE id = ?",
                (
                    alias or f"contact-{request_id}",
                    inbound.to_bytes(),
                    outbound.to_bytes(),
                    ratchet.to_bytes(),
                    e2e.SenderChain().to_bytes(),
                    e2e.ReceiverChain().to_bytes(),
                    request_id,
                ),
            )
            self._queue_outgoing(request_id, accept_message, queue=outbound)
        await self.flush(request_id)
        return self.contact_by_id(request_id)

    async def reject(self, request_id: int) -> None:
        row = self.db.fetch_one(
            "SELECT inbound FROM contacts WHERE id = ? AND profile_id = ? AND state = 'pending'",
            (request_id, self.profile.id),
        )
        if row is None:
            raise AgentError(f"no pending request {request_id} (see 'onionpost requests')")
        with self.db.transaction():
            self.db.execute("DELETE FROM contacts WHERE id = ?", (request_id,))
        try:  # the queue is useless now; deleting it is a courtesy to the relay
            await self.network.delete_queue(InboundQueue.from_bytes(row[0]))
        except (LinkClosed, RelayError, NoRelayError, OSError):
            pass

    # --- contacts -----------------------------------------------------------------

    def _contacts(self, where: str = "1", params: tuple = ()) -> list[Contact]:
        rows = self.db.fetch_all(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE profile_id = ? AND {where} ORDER BY id",
            (self.profile.id, *params),
        )
        return [Contact(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    def contacts(self) -> list[Contact]:
        return self._contacts("state != 'pending'")

    def contact_by_id(self, contact_id: int) -> Contact:
        [contact] = self._contacts("id = ?", (contact_id,))
        return contact

    def contact(self, alias: str) -> Contact:
        found = self._contacts("alias = ?", (alias,))
        if not found:
            raise AgentError(f"no contact named {alias!r} (see 'onionpost contacts')")
        return found[0]

    def _check_alias(self, alias: str, exclude: int | None = None) -> str:
        alias = alias.strip()
        if not alias or len(alias) > MAX_ALIAS or any(not c.isprintable() for c in alias):
            raise AgentError(f"an alias must be 1 to {MAX_ALIAS} printable characters")
        row = self.db.fetch_one(
            "SELECT id FROM contacts WHERE profile_id = ? AND alias = ?", (self.profile.id, alias)
        )
        if row is not None and row[0] != exclude:
            raise AgentError(f"you already have a contact named {alias!r}")
        return alias

    def _insert_contact(self, alias: str | None, *, role: str, state: str, provenance: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO contacts (profile_id, alias, role, state, provenance, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (self.profile.id, alias or f"new-{self.rng(6).hex()}", role, state, provenance, self._now()),
        )
        contact_id = cursor.lastrowid
        if alias is None:
            default = f"request-{contact_id}" if state == "pending" else f"contact-{contact_id}"
            self.db.execute("UPDATE contacts SET alias = ? WHERE id = ?", (default, contact_id))
        return contact_id

    def _my_profile(self) -> dict:
        return {"name": self.profile.display_name, "bio": self.profile.bio}

    def history(self, alias: str, limit: int = 50) -> list[dict]:
        contact = self.contact(alias)
        rows = self.db.fetch_all(
            "SELECT direction, seq, text, state, notice, created_at FROM messages WHERE contact_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (contact.id, limit),
        )
        keys = ("direction", "seq", "text", "state", "notice", "time")
        return [dict(zip(keys, row)) for row in reversed(rows)]

    def security_code(self, alias: str) -> str:
        contact = self.contact(alias)
        row = self.db.fetch_one("SELECT ratchet FROM contacts WHERE id = ?", (contact.id,))
        if row[0] is None:
            raise AgentError(f"{alias} is not connected yet: there is no code to compare")
        return e2e.safety_code_for_state(e2e.RatchetState.from_bytes(row[0]))

    def verify(self, alias: str, code: str) -> bool:
        """Mark ``alias`` verified if ``code`` matches; return whether it did."""
        expected = self.security_code(alias)
        if not e2e.codes_match(expected, code):
            return False
        with self.db.transaction():
            self.db.execute("UPDATE contacts SET verified = 1 WHERE id = ?", (self.contact(alias).id,))
        return True

    # --- sending -------------------------------------------------------------------

    async def send(self, alias: str, text: str) -> dict:
        """Encrypt and queue a message, then try to deliver it; return its row."""
        contact = self.contact(alias)
        if contact.state not in ("connected", "accepted"):
            raise AgentError(f"{alias} is not connected yet (state: {contact.state})")
        if not text.strip():
            raise AgentError("the message is empty")
        if len(text.encode()) > MAX_TEXT:
            raise AgentError(f"message too long: at most {MAX_TEXT} bytes")
        with self.db.transaction():
            message_id = self.db.execute(
                "INSERT INTO messages (contact_id, direction, text, state, created_at) VALUES (?, 'out', ?, 'pending', ?)",
                (contact.id, text, self._now()),
            ).lastrowid
            seq = self._queue_chat(contact.id, payloads.encode("msg", text=text, ts=self._now()), message_id)
            self.db.execute("UPDATE messages SET seq = ? WHERE id = ?", (seq, message_id))
        await self.flush(contact.id)
        state = self.db.fetch_one("SELECT state FROM messages WHERE id = ?", (message_id,))[0]
        return {"contact": alias, "seq": seq, "text": text, "state": state}

    def _queue_chat(self, contact_id: int, payload: bytes, message_id: int | None = None, queue: OutboundQueue | None = None) -> int:
        """Chain, encrypt and store one payload in the outbox (inside the caller's transaction)."""
        row = self.db.fetch_one("SELECT ratchet, send_chain FROM contacts WHERE id = ?", (contact_id,))
        chain, chained = e2e.SenderChain.from_bytes(row[1]).next_message(payload)
        ratchet, ciphertext = e2e.ratchet_encrypt(e2e.RatchetState.from_bytes(row[0]), chained, rng=self.rng)
        self.db.execute(
            "UPDATE contacts SET ratchet = ?, send_chain = ? WHERE id = ?", (ratchet.to_bytes(), chain.to_bytes(), contact_id)
        )
        self._queue_outgoing(contact_id, ciphertext, message_id=message_id, queue=queue)
        return chain.last_seq

    def _queue_outgoing(self, contact_id: int, body: bytes, *, message_id: int | None = None, queue: OutboundQueue | None = None) -> None:
        self.db.execute(
            "INSERT INTO outbox (contact_id, message_id, queue, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (contact_id, message_id, queue.to_bytes() if queue else None, body, self._now()),
        )

    def _load_contact_tags(self) -> None:
        """For per-contact isolation: both queues of a contact share its tag."""
        if self.network.isolation != "contact":
            return
        for contact_id, *blobs in self.db.fetch_all(
            "SELECT id, inbound, next_inbound, outbound FROM contacts WHERE profile_id = ?", (self.profile.id,)
        ):
            for blob, kind in zip(blobs, (InboundQueue, InboundQueue, OutboundQueue)):
                if blob is not None:
                    queue = kind.from_bytes(blob)
                    self.network.contact_tags[queue.rid if kind is InboundQueue else queue.snd] = f"contact:{contact_id}"

    async def flush(self, contact_id: int | None = None) -> int:
        """Send what is in the outbox, oldest first; stop at a contact's first failure. Return how many left."""
        self._load_contact_tags()
        where, params = ("contact_id = ?", (contact_id,)) if contact_id is not None else ("1", ())
        rows = self.db.fetch_all(
            f"SELECT o.id, o.contact_id, o.message_id, o.queue, o.body, c.state, c.outbound, c.alias "
            f"FROM outbox o JOIN contacts c ON c.id = o.contact_id WHERE c.profile_id = ? AND {where} ORDER BY o.id",
            (self.profile.id, *params),
        )
        by_contact: dict[int, list[tuple]] = {}
        for row in rows:
            by_contact.setdefault(row[1], []).append(row)
        # Contacts at once (each in its own order): one unreachable relay delays no other contact.
        await asyncio.gather(*(self._flush_contact(contact_rows) for contact_rows in by_contact.values()))
        return self.db.fetch_one(
            "SELECT count(*) FROM outbox o JOIN contacts c ON c.id = o.contact_id WHERE c.profile_id = ?", (self.profile.id,)
        )[0]

    async def _flush_contact(self, rows: list[tuple]) -> None:
        """Send one contact's outbox rows in order; stop at the first failure."""
        for outbox_id, _, message_id, fixed_queue, body, state, outbound, alias in rows:
            if fixed_queue is None and state != "connected":
                return  # chat waits until the contact has secured its queue
            queue = OutboundQueue.from_bytes(fixed_queue or outbound)
            try:
                await self.network.send(queue, body)
            except (RelayError, LinkClosed, NoRelayError, OSError, asyncio.TimeoutError) as exc:
                with self.db.transaction():
                    self.db.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (str(exc)[:200], outbox_id)
                    )
                if isinstance(exc, RelayError) and not exc.retry_later:
                    self._event("warning", alias, f"the relay refused a message to {alias}: {exc}")
                return
            with self.db.transaction():
                self.db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))
                if message_id is not None:
                    self.db.execute("UPDATE messages SET state = 'sent' WHERE id = ? AND state = 'pending'", (message_id,))

    # --- receiving -----------------------------------------------------------------

    async def receive(self, wait: float = 5.0) -> list[Event]:
        """Subscribe to every inbound queue, process what arrives, send what is pending.

        Returns after ``wait`` seconds without news. Events are also kept in ``self.events``.
        """
        start = len(self.events)
        await self.flush()
        await self._subscribe_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (remaining := deadline - loop.time()) > 0:
            try:
                delivery = await asyncio.wait_for(self.network.deliveries.get(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                await self.network.resubscribe()
                await self.flush()
                continue
            try:
                await self._handle(delivery)
            except (LinkClosed, RelayError, NoRelayError, AgentError, OSError, asyncio.TimeoutError) as exc:
                # Not acknowledged: re-subscribing makes the relay deliver it again.
                self._event("warning", None, f"will retry a message: {exc}")
                self.network.unsubscribe(delivery.queue)
                self._owners.pop(delivery.queue.rid, None)
            await self._subscribe_all()  # handling may have created or replaced queues
            await self.network.resubscribe()  # busy queues must not starve the reconnects of others
            deadline = loop.time() + wait
        await self.flush()
        return self.events[start:]

    async def _subscribe_all(self) -> None:
        self._load_contact_tags()
        queues: list[tuple[InboundQueue, str, int]] = []
        for row in self.db.fetch_all("SELECT id, inbound FROM invitations WHERE profile_id = ?", (self.profile.id,)):
            queues.append((InboundQueue.from_bytes(row[1]), "invitation", row[0]))
        for row in self.db.fetch_all(
            "SELECT id, inbound, next_inbound FROM contacts WHERE profile_id = ? AND state IN ('requested', 'accepted', 'connected')",
            (self.profile.id,),
        ):
            for blob in row[1:]:
                if blob is not None:
                    queues.append((InboundQueue.from_bytes(blob), "contact", row[0]))
        new = [(queue, kind, row_id) for queue, kind, row_id in queues if queue.rid not in self._owners]
        for queue, kind, row_id in new:
            self._owners[queue.rid] = (kind, row_id)
        # All at once: one unreachable relay must not delay the queues on the others.
        results = await asyncio.gather(*(self.network.subscribe(queue) for queue, _, _ in new), return_exceptions=True)
        for (queue, _, _), result in zip(new, results):
            if isinstance(result, (LinkClosed, RelayError, OSError, asyncio.TimeoutError)):
                # Still subscribed locally: ``network.resubscribe`` keeps trying, with backoff.
                self._event("warning", None, f"cannot reach relay {parse_node_address(queue.relay).host}: {result}")
            elif isinstance(result, BaseException):
                raise result

    async def _handle(self, delivery: Delivery) -> None:
        owner = self._owners.get(delivery.queue.rid)
        if owner is None:
            return
        kind, row_id = owner
        if kind == "invitation":
            await self._handle_request(row_id, delivery)
            return
        row = self.db.fetch_one("SELECT state, last_mid, alias FROM contacts WHERE id = ?", (row_id,))
        if row is None:
            return
        state, last_mid, alias = row
        if last_mid == delivery.mid:  # stored before a crash, not yet acknowledged
            await self.network.ack(delivery.queue, delivery.mid)
            return
        if state == "requested":
            await self._handle_accept(row_id, alias, delivery)
        else:
            await self._handle_ratchet_message(row_id, alias, state, delivery)

    async def _handle_request(self, invitation_id: int, delivery: Delivery) -> None:
        row = self.db.fetch_one(
            "SELECT secrets, shared_as, auto_accept, inbound FROM invitations WHERE id = ?", (invitation_id,)
        )
        if row is None:
            await self.network.ack(delivery.queue, delivery.mid)
            return
        secrets = e2e.InviterSecrets.from_bytes(row[0])
        try:
            request = e2e.open_request(secrets, delivery.body)
            details = payloads.decode(request.payload, expect={"request"})
            parse_node_address(details["reply"])
        except (e2e.E2EError, payloads.PayloadError, AddressError) as exc:
            self._event(
                "warning",
                None,
                f"refused a connection request for invitation {invitation_id}: {exc}. "
                "Someone may have tampered with it; make a new invitation and share it in person if you can.",
            )
            await self.network.ack(delivery.queue, delivery.mid)
            return
        provenance = "qr-screen" if row[1] == "qr" and details["via"] == "qr-image" else "link"
        with self.db.transaction():
            contact_id = self._insert_contact(None, role="inviter", state="pending", provenance=provenance)
            self.db.execute(
                "UPDATE contacts SET inbound = ?, handshake = ?, last_mid = ? WHERE id = ?",
                (row[3], msgpack.packb({"secrets": row[0], "request": delivery.body}, use_bin_type=True), delivery.mid, contact_id),
            )
            self.db.execute("DELETE FROM invitations WHERE id = ?", (invitation_id,))
        self._owners[delivery.queue.rid] = ("contact", contact_id)
        await self.network.ack(delivery.queue, delivery.mid)
        self._event("request", f"request-{contact_id}", f"connection request {contact_id} (via {PROVENANCE_LABELS[provenance]})", request=contact_id)
        if row[2]:
            contact = await self.accept(contact_id)
            self._event("accepted", contact.alias, f"accepted request {contact_id} automatically")

    async def _handle_accept(self, contact_id: int, alias: str, delivery: Delivery) -> None:
        row = self.db.fetch_one("SELECT handshake, inbound, outbound FROM contacts WHERE id = ?", (contact_id,))
        pending = e2e.JoinerPending.from_bytes(row[0])
        try:
            ratchet, plain = e2e.complete_join(pending, delivery.body, rng=self.rng)
            accept = payloads.decode(plain, expect={"accept"})
        except (e2e.E2EError, payloads.PayloadError) as exc:
            self._event("warning", alias, f"the answer to your connection request failed: {exc}")
            await self.network.ack(delivery.queue, delivery.mid)
            return
        inbound = await self.network.secure_queue(InboundQueue.from_bytes(row[1]), accept["skey"])
        outbound = dataclasses.replace(OutboundQueue.from_bytes(row[2]), secured=True)
        profile = accept["profile"]
        with self.db.transaction():
            self.db.execute(
                "UPDATE contacts SET state = 'connected', display_name = ?, bio = ?, inbound = ?, outbound = ?, "
                "handshake = NULL, ratchet = ?, send_chain = ?, recv_chain = ?, last_mid = ? WHERE id = ?",
                (
                    profile["name"], profile["bio"], inbound.to_bytes(), outbound.to_bytes(), ratchet.to_bytes(),
                    e2e.SenderChain().to_bytes(), e2e.ReceiverChain().to_bytes(), delivery.mid, contact_id,
                ),
            )
            self._queue_chat(contact_id, payloads.encode("profile", profile=self._my_profile()))
            alias = self._adopt_display_name(contact_id, alias, profile["name"])
        await self.network.ack(delivery.queue, delivery.mid)
        self._event("connected", alias, f"connected to {alias} ({profile['name']})")
        await self.flush(contact_id)

    def _adopt_display_name(self, contact_id: int, alias: str, display_name: str) -> str:
        """Rename a contact still under its default alias to its display name, if free."""
        if not alias.startswith(("contact-", "request-")):
            return alias
        try:
            new_alias = self._check_alias(display_name, exclude=contact_id)
        except AgentError:
            return alias
        self.db.execute("UPDATE contacts SET alias = ? WHERE id = ?", (new_alias, contact_id))
        return new_alias

    async def _handle_ratchet_message(self, contact_id: int, alias: str, state: str, delivery: Delivery) -> None:
        row = self.db.fetch_one("SELECT ratchet, recv_chain FROM contacts WHERE id = ?", (contact_id,))
        try:
            ratchet, plain = e2e.ratchet_decrypt(e2e.RatchetState.from_bytes(row[0]), delivery.body, rng=self.rng)
            chain, verdict, body = e2e.ReceiverChain.from_bytes(row[1]).receive(plain)
            payload = payloads.decode(body)
        except e2e.ReplayError:
            await self.network.ack(delivery.queue, delivery.mid)  # a duplicate of a message we already have
            return
        except (e2e.E2EError, payloads.PayloadError) as exc:
            self._event("warning", alias, f"a message from {alias} could not be read and was dropped: {exc}")
            await self.network.ack(delivery.queue, delivery.mid)
            return
        after_commit = []
        with self.db.transaction():
            self.db.execute(
                "UPDATE contacts SET ratchet = ?, recv_chain = ?, last_mid = ? WHERE id = ?",
                (ratchet.to_bytes(), chain.to_bytes(), delivery.mid, contact_id),
            )
            if verdict.verdict is not e2e.Verdict.DUPLICATE:
                seq = e2e.decode_message(plain)[0].seq
                alias = self._apply(contact_id, alias, state, seq, payload, verdict, delivery, after_commit)
        await self.network.ack(delivery.queue, delivery.mid)
        for action in after_commit:
            await action()

    def _apply(self, contact_id, alias, state, seq, payload, verdict, delivery, after_commit) -> str:
        """Apply one decrypted payload inside the receiving transaction; return the (maybe new) alias."""
        notice = None if verdict.verdict is e2e.Verdict.OK else f"{verdict.verdict.value}: {verdict.detail}"
        if notice:
            self._event("warning", alias, f"message from {alias}: {notice}")
        kind = payload.kind
        if kind == "profile":
            self.db.execute(
                "UPDATE contacts SET display_name = ?, bio = ? WHERE id = ?",
                (payload["profile"]["name"], payload["profile"]["bio"], contact_id),
            )
            if state == "accepted":
                outbound = self.db.fetch_one("SELECT outbound FROM contacts WHERE id = ?", (contact_id,))[0]
                secured = dataclasses.replace(OutboundQueue.from_bytes(outbound), secured=True)
                self.db.execute(
                    "UPDATE contacts SET state = 'connected', outbound = ? WHERE id = ?", (secured.to_bytes(), contact_id)
                )
                alias = self._adopt_display_name(contact_id, alias, payload["profile"]["name"])
                self._event("connected", alias, f"connected to {alias} ({payload['profile']['name']})")
                after_commit.append(lambda: self.flush(contact_id))
        elif kind == "msg":
            self.db.execute(
                "INSERT OR IGNORE INTO messages (contact_id, direction, seq, text, state, notice, created_at) "
                "VALUES (?, 'in', ?, ?, 'received', ?, ?)",
                (contact_id, seq, payload["text"], notice, delivery.timestamp),
            )
            self._event("message", alias, payload["text"], seq=seq, time=delivery.timestamp)
            self._queue_chat(contact_id, payloads.encode("rcpt", seq=seq))
            after_commit.append(lambda: self.flush(contact_id))
        elif kind == "rcpt":
            updated = self.db.execute(
                "UPDATE messages SET state = 'delivered' WHERE contact_id = ? AND direction = 'out' AND seq = ?",
                (contact_id, payload["seq"]),
            ).rowcount
            if updated:
                self._event("delivered", alias, f"message {payload['seq']} delivered", seq=payload["seq"])
        elif kind == "qnew":
            self._switch_outbound(contact_id, payload)
            self._event("rotated", alias, f"{alias} moved your messages to a new queue")
            after_commit.append(lambda: self.flush(contact_id))
        elif kind == "qdone":
            after_commit.append(lambda: self._retire_old_inbound(contact_id, alias))
        return alias

    # --- rotation ------------------------------------------------------------------

    async def rotate(self, alias: str) -> str:
        """Move the contact's messages to us onto a fresh queue (new ids and keys, another relay if we have one).

        Steps (docs/client.md, "Rotation"): we create and secure the new queue and
        send ``qnew`` (with its sender key) over the old one; the contact sends
        ``qdone`` as its last message on the old queue and writes to the new one
        from then on; on ``qdone`` we delete the old queue. Nothing in flight is lost.
        """
        contact = self.contact(alias)
        if contact.state != "connected":
            raise AgentError(f"{alias} is not connected yet (state: {contact.state})")
        row = self.db.fetch_one("SELECT inbound, next_inbound FROM contacts WHERE id = ?", (contact.id,))
        if row[1] is not None:
            raise AgentError(f"a rotation with {alias} is already under way; run 'onionpost receive' to finish it")
        current = InboundQueue.from_bytes(row[0])
        relay = self._pick_relay(avoid=current.relay)
        fresh = await self._network_call(self.network.create_queue(relay), relay.address)
        sender_public, sender_secret = new_sender_key(self.rng)
        fresh = await self._network_call(self.network.secure_queue(fresh, sender_public), relay.address)
        with self.db.transaction():
            self.db.execute("UPDATE contacts SET next_inbound = ? WHERE id = ?", (fresh.to_bytes(), contact.id))
            self._queue_chat(contact.id, payloads.encode("qnew", relay=relay.address, snd=fresh.snd, skey=sender_secret))
        await self.flush(contact.id)
        return relay.address

    def _switch_outbound(self, contact_id: int, payload) -> None:
        old = OutboundQueue.from_bytes(self.db.fetch_one("SELECT outbound FROM contacts WHERE id = ?", (contact_id,))[0])
        try:
            parse_node_address(payload["relay"])
            new = OutboundQueue(payload["relay"], payload["snd"], payload["skey"], secured=True)
        except (AddressError, TypeError, ValueError):
            return
        self._queue_chat(contact_id, payloads.encode("qdone"), queue=old)
        self.db.execute("UPDATE contacts SET outbound = ? WHERE id = ?", (new.to_bytes(), contact_id))

    async def _retire_old_inbound(self, contact_id: int, alias: str) -> None:
        row = self.db.fetch_one("SELECT inbound, next_inbound FROM contacts WHERE id = ?", (contact_id,))
        if row is None or row[1] is None:
            return
        old = InboundQueue.from_bytes(row[0])
        with self.db.transaction():
            self.db.execute("UPDATE contacts SET inbound = next_inbound, next_inbound = NULL WHERE id = ?", (contact_id,))
        self.network.unsubscribe(old)
        self._owners.pop(old.rid, None)
        try:
            await self.network.delete_queue(old)
        except (LinkClosed, RelayError, NoRelayError, OSError):
            pass  # the relay purges nothing else; an orphan queue expires with its messages
        self._event("rotated", alias, f"the connection with {alias} now uses a new queue")

    # --- helpers ---------------------------------------------------------------------

    def queue_tags(self) -> list[dict]:
        """Each of our queues with the isolation tag its traffic uses (for showing circuits)."""
        rows = []
        for alias, *blobs in self.db.fetch_all(
            "SELECT alias, inbound, outbound FROM contacts WHERE profile_id = ? AND state = 'connected' ORDER BY id",
            (self.profile.id,),
        ):
            for blob, kind, direction in zip(blobs, (InboundQueue, OutboundQueue), ("from", "to")):
                if blob is not None:
                    queue = kind.from_bytes(blob)
                    rows.append({"contact": alias, "direction": direction, "relay": queue.relay, "tag": self.network.tag_of(queue)})
        return rows

    async def _network_call(self, call, relay: str):
        try:
            return await call
        except RelayError as exc:
            hint = " (ask the relay operator for an access key: 'onionpost relay add ADDRESS --access-key KEY')" if exc.code == "ACCESS" else ""
            raise AgentError(f"relay refused: {exc}{hint}") from None
        except (LinkClosed, NoRelayError, OSError, asyncio.TimeoutError) as exc:
            raise AgentError(f"cannot reach relay {relay}: {exc}") from None
