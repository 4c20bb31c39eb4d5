"""Every SQL statement of the agent, behind one small interface (``ChatStore``).

The agent never writes SQL: it asks the store, inside ``store.transaction()``
when several changes must land together. Tables are described in
``client/db.py``; what they mean in docs/client.md, "Storage".
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .db import Database

EVENT_LOG_SIZE = 1000
"""Events kept per home for ``events.subscribe {"since": ID}`` (older ones are dropped)."""


class ContactState(enum.StrEnum):
    """Where a contact stands (docs/client.md, "Connecting").

    joiner:  REQUESTED --(their accept arrives)--> CONNECTED
    inviter: PENDING --(user accepts)--> ACCEPTED --(their profile arrives)--> CONNECTED
             PENDING --(user rejects)--> deleted
    either:  REQUESTED/ACCEPTED --(the relay says the queue does not exist)--> FAILED
             REQUESTED --(no answer within REQUEST_TIMEOUT)--> FAILED
             any --(user blocks)--> BLOCKED      any --(user deletes, history kept)--> DELETED
    """

    REQUESTED = "requested"
    PENDING = "pending"
    ACCEPTED = "accepted"
    CONNECTED = "connected"
    FAILED = "failed"
    BLOCKED = "blocked"
    DELETED = "deleted"


LIVE_STATES = (ContactState.REQUESTED, ContactState.ACCEPTED, ContactState.CONNECTED)
"""States whose inbound queues are subscribed."""

_CONTACT_COLUMNS = ("id", "alias", "display_name", "state", "role", "provenance", "verified")
_UPDATABLE = frozenset({
    "alias", "display_name", "bio", "state", "verified", "inbound", "next_inbound", "outbound",
    "handshake", "ratchet", "send_chain", "recv_chain", "last_mid",
})


@dataclass(frozen=True)
class ContactRow:
    id: int
    alias: str
    display_name: str | None
    state: str
    role: str
    provenance: str
    verified: bool


@dataclass(frozen=True)
class OutboxRow:
    id: int
    contact_id: int
    message_id: int | None
    queue: bytes | None
    body: bytes
    not_before: float
    state: str
    outbound: bytes | None
    alias: str


@dataclass(frozen=True)
class StoredEvent:
    id: int
    profile_id: int | None
    kind: str
    contact: str | None
    text: str
    data: dict
    time: int


class ChatStore:
    def __init__(self, db: Database, profile_id: int):
        self.db = db
        self.profile_id = profile_id

    @contextmanager
    def transaction(self) -> Iterator[ChatStore]:
        with self.db.transaction():
            yield self

    def after_commit(self, callback) -> None:
        self.db.after_commit(callback)

    # --- invitations ---------------------------------------------------------

    def add_invitation(self, inbound: bytes, secrets: bytes, link: str, shared_as: str, auto_accept: bool, now: int) -> int:
        return self.db.execute(
            "INSERT INTO invitations (profile_id, inbound, secrets, link, shared_as, auto_accept, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.profile_id, inbound, secrets, link, shared_as, int(auto_accept), now),
        ).lastrowid

    def invitation(self, invitation_id: int) -> tuple[bytes, str, bool, bytes] | None:
        """(secrets, shared_as, auto_accept, inbound) of an open invitation."""
        row = self.db.fetch_one(
            "SELECT secrets, shared_as, auto_accept, inbound FROM invitations WHERE id = ? AND profile_id = ?",
            (invitation_id, self.profile_id),
        )
        return (row[0], row[1], bool(row[2]), row[3]) if row else None

    def delete_invitation(self, invitation_id: int) -> None:
        self.db.execute("DELETE FROM invitations WHERE id = ?", (invitation_id,))

    def invitation_queues(self) -> list[tuple[int, bytes]]:
        return [tuple(r) for r in self.db.fetch_all(
            "SELECT id, inbound FROM invitations WHERE profile_id = ? ORDER BY id", (self.profile_id,)
        )]

    # --- contacts --------------------------------------------------------------

    def contacts(self, *, states: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[ContactRow]:
        where, params = ["profile_id = ?"], [self.profile_id]
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params += states
        if exclude:
            where.append(f"state NOT IN ({', '.join('?' * len(exclude))})")
            params += exclude
        rows = self.db.fetch_all(
            f"SELECT {', '.join(_CONTACT_COLUMNS)} FROM contacts WHERE {' AND '.join(where)} ORDER BY id", params
        )
        return [ContactRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    def contact(self, contact_id: int) -> ContactRow | None:
        row = self.db.fetch_one(
            f"SELECT {', '.join(_CONTACT_COLUMNS)} FROM contacts WHERE id = ? AND profile_id = ?",
            (contact_id, self.profile_id),
        )
        return ContactRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6])) if row else None

    def contacts_named(self, alias: str) -> list[ContactRow]:
        """Exact match first; else every contact whose alias matches ignoring case."""
        found = [c for c in self.contacts() if c.alias == alias]
        return found or [c for c in self.contacts() if c.alias.casefold() == alias.casefold()]

    def alias_owner(self, alias: str) -> int | None:
        row = self.db.fetch_one("SELECT id FROM contacts WHERE profile_id = ? AND alias = ?", (self.profile_id, alias))
        return row[0] if row else None

    def insert_contact(self, alias: str | None, *, role: str, state: str, provenance: str, now: int) -> int:
        """Add a contact under ``alias`` (or ``request-N``/``contact-N``); N is never reused."""
        contact_id = self._next_contact_id()
        if alias is None:
            alias = f"request-{contact_id}" if state == ContactState.PENDING else f"contact-{contact_id}"
        self.db.execute(
            "INSERT INTO contacts (id, profile_id, alias, role, state, provenance, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (contact_id, self.profile_id, alias, role, state, provenance, now),
        )
        return contact_id

    def _next_contact_id(self) -> int:
        # Ids double as request numbers, which users type: a deleted one must never come back.
        row = self.db.fetch_one("SELECT value FROM settings WHERE key = 'last_contact_id'")
        highest = self.db.fetch_one("SELECT coalesce(max(id), 0) FROM contacts")[0]
        next_id = max(row[0] if row else 0, highest) + 1
        self.db.execute(
            "INSERT INTO settings (key, value) VALUES ('last_contact_id', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (next_id,),
        )
        return next_id

    def contact_fields(self, contact_id: int, *names: str) -> tuple | None:
        """The named columns of one contact (state blobs included)."""
        assert set(names) <= _UPDATABLE | {"id", "role", "provenance"}, names
        row = self.db.fetch_one(f"SELECT {', '.join(names)} FROM contacts WHERE id = ?", (contact_id,))
        return tuple(row) if row else None

    def update_contact(self, contact_id: int, *, expect_state: str | None = None, **fields: Any) -> bool:
        """Set columns of one contact; with ``expect_state``, only if it is still in that state. Return whether it was."""
        assert fields and set(fields) <= _UPDATABLE, fields
        sql = f"UPDATE contacts SET {', '.join(f'{name} = ?' for name in fields)} WHERE id = ?"
        params = [*fields.values(), contact_id]
        if expect_state is not None:
            sql += " AND state = ?"
            params.append(expect_state)
        return self.db.execute(sql, params).rowcount == 1

    def delete_contact(self, contact_id: int) -> None:
        self.db.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))

    def requested_before(self, created_before: int) -> list[ContactRow]:
        rows = self.db.fetch_all(
            "SELECT id FROM contacts WHERE profile_id = ? AND state = ? AND created_at < ?",
            (self.profile_id, ContactState.REQUESTED, created_before),
        )
        return [self.contact(r[0]) for r in rows]

    def live_queues(self) -> list[tuple[int, bytes | None, bytes | None]]:
        """(contact id, inbound, next_inbound) of the contacts whose queues we read."""
        rows = self.db.fetch_all(
            f"SELECT id, inbound, next_inbound FROM contacts WHERE profile_id = ? "
            f"AND state IN ({', '.join('?' * len(LIVE_STATES))}) ORDER BY id",
            (self.profile_id, *LIVE_STATES),
        )
        return [tuple(r) for r in rows]

    def connected_contacts(self) -> list[int]:
        rows = self.db.fetch_all("SELECT id FROM contacts WHERE profile_id = ? AND state = ? ORDER BY id",
                                 (self.profile_id, ContactState.CONNECTED))
        return [r[0] for r in rows]

    def queue_blobs(self, *, states: tuple[str, ...] | None = None) -> list[tuple[int, str, bytes | None, bytes | None, bytes | None]]:
        """(id, alias, inbound, next_inbound, outbound) of every contact (in ``states``)."""
        where, params = "profile_id = ?", [self.profile_id]
        if states is not None:
            where += f" AND state IN ({', '.join('?' * len(states))})"
            params += states
        rows = self.db.fetch_all(f"SELECT id, alias, inbound, next_inbound, outbound FROM contacts WHERE {where} ORDER BY id", params)
        return [tuple(r) for r in rows]

    # --- messages ----------------------------------------------------------------

    def add_outgoing_message(self, contact_id: int, text: str, now: int) -> int:
        return self.db.execute(
            "INSERT INTO messages (contact_id, direction, text, state, created_at) VALUES (?, 'out', ?, 'pending', ?)",
            (contact_id, text, now),
        ).lastrowid

    def set_message_seq(self, message_id: int, seq: int) -> None:
        self.db.execute("UPDATE messages SET seq = ? WHERE id = ?", (seq, message_id))

    def add_incoming_message(self, contact_id: int, seq: int, text: str, notice: str | None, time: int) -> int | None:
        """Store a received message (unread); None if this sequence number is already stored."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO messages (contact_id, direction, seq, text, state, notice, created_at, unread) "
            "VALUES (?, 'in', ?, ?, 'received', ?, ?, 1)",
            (contact_id, seq, text, notice, time),
        )
        return cursor.lastrowid if cursor.rowcount else None

    def mark_delivered(self, contact_id: int, seq: int) -> dict | None:
        """Mark our message ``seq`` delivered; return it (id, text, time) if it was not already."""
        row = self.db.fetch_one(
            "SELECT id, text, created_at FROM messages WHERE contact_id = ? AND direction = 'out' AND seq = ? AND state != 'delivered'",
            (contact_id, seq),
        )
        if row is None:
            return None
        self.db.execute("UPDATE messages SET state = 'delivered' WHERE id = ?", (row[0],))
        return {"id": row[0], "text": row[1], "time": row[2]}

    def mark_sent(self, message_id: int) -> bool:
        return self.db.execute("UPDATE messages SET state = 'sent' WHERE id = ? AND state = 'pending'", (message_id,)).rowcount == 1

    def fail_pending_messages(self, contact_id: int) -> None:
        self.db.execute("UPDATE messages SET state = 'failed' WHERE contact_id = ? AND direction = 'out' AND state = 'pending'",
                        (contact_id,))

    def message_state(self, message_id: int) -> str | None:
        row = self.db.fetch_one("SELECT state FROM messages WHERE id = ?", (message_id,))
        return row[0] if row else None

    def history(self, contact_id: int, limit: int) -> list[dict]:
        rows = self.db.fetch_all(
            "SELECT id, direction, seq, text, state, notice, created_at, unread FROM messages WHERE contact_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (contact_id, limit),
        )
        keys = ("id", "direction", "seq", "text", "state", "notice", "time", "unread")
        return [dict(zip(keys, row)) | {"unread": bool(row[7])} for row in reversed(rows)]

    def mark_read(self, contact_id: int, up_to_message_id: int | None = None) -> int:
        sql, params = "UPDATE messages SET unread = 0 WHERE contact_id = ? AND unread = 1", [contact_id]
        if up_to_message_id is not None:
            sql += " AND id <= ?"
            params.append(up_to_message_id)
        return self.db.execute(sql, params).rowcount

    def unread_messages(self) -> list[dict]:
        rows = self.db.fetch_all(
            "SELECT m.id, c.alias, m.text, m.seq, m.created_at FROM messages m JOIN contacts c ON c.id = m.contact_id "
            "WHERE c.profile_id = ? AND m.unread = 1 ORDER BY m.id",
            (self.profile_id,),
        )
        return [dict(zip(("id", "alias", "text", "seq", "time"), r)) for r in rows]

    def mark_messages_read(self, message_ids: list[int]) -> None:
        self.db.executemany("UPDATE messages SET unread = 0 WHERE id = ?", [(i,) for i in message_ids])

    def unread_counts(self) -> dict[int, int]:
        rows = self.db.fetch_all(
            "SELECT m.contact_id, count(*) FROM messages m JOIN contacts c ON c.id = m.contact_id "
            "WHERE c.profile_id = ? AND m.unread = 1 GROUP BY m.contact_id",
            (self.profile_id,),
        )
        return {r[0]: r[1] for r in rows}

    # --- outbox ---------------------------------------------------------------------

    def add_outbox(self, contact_id: int, body: bytes, *, now: int, message_id: int | None = None,
                   queue: bytes | None = None, not_before: float = 0.0, automatic: bool = False) -> int:
        return self.db.execute(
            "INSERT INTO outbox (contact_id, message_id, queue, body, created_at, not_before, automatic) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (contact_id, message_id, queue, body, now, not_before, int(automatic)),
        ).lastrowid

    def outbox(self, contact_id: int | None = None) -> list[OutboxRow]:
        where, params = "c.profile_id = ?", [self.profile_id]
        if contact_id is not None:
            where += " AND o.contact_id = ?"
            params.append(contact_id)
        rows = self.db.fetch_all(
            "SELECT o.id, o.contact_id, o.message_id, o.queue, o.body, o.not_before, c.state, c.outbound, c.alias "
            f"FROM outbox o JOIN contacts c ON c.id = o.contact_id WHERE {where} ORDER BY o.id",
            params,
        )
        return [OutboxRow(*r) for r in rows]

    def release_outbox(self, contact_id: int, at: float = 0.0) -> None:
        """Make a contact's automatic rows delayed past ``at`` (and held ones) due at ``at``: they leave with the
        user message queued next (whose own time is ``at``)."""
        self.db.execute("UPDATE outbox SET not_before = ? WHERE contact_id = ? AND automatic = 1 AND not_before > ?",
                        (at, contact_id, at))

    def next_delayed(self, now: float, held: float) -> float | None:
        """The earliest ``not_before`` still in the future (held rows excluded)."""
        row = self.db.fetch_one(
            "SELECT min(o.not_before) FROM outbox o JOIN contacts c ON c.id = o.contact_id "
            "WHERE c.profile_id = ? AND o.not_before > ? AND o.not_before < ?",
            (self.profile_id, now, held),
        )
        return row[0] if row else None

    def outbox_sent(self, outbox_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    def outbox_failed(self, outbox_id: int, error: str) -> None:
        self.db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:200], outbox_id))

    def drop_outbox(self, contact_id: int) -> int:
        return self.db.execute("DELETE FROM outbox WHERE contact_id = ?", (contact_id,)).rowcount

    def outbox_count(self) -> int:
        return self.db.fetch_one(
            "SELECT count(*) FROM outbox o JOIN contacts c ON c.id = o.contact_id WHERE c.profile_id = ?", (self.profile_id,)
        )[0]

    # --- events ------------------------------------------------------------------------

    def add_event(self, kind: str, contact: str | None, text: str, data: dict, now: int) -> int:
        event_id = self.db.execute(
            "INSERT INTO events (profile_id, kind, contact, text, data, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (self.profile_id, kind, contact, text, json.dumps(data, default=str), now),
        ).lastrowid
        self.db.execute("DELETE FROM events WHERE id <= ?", (event_id - EVENT_LOG_SIZE,))
        return event_id


def events_since(db: Database, since: int, limit: int = EVENT_LOG_SIZE) -> list[StoredEvent]:
    """Every profile's events with an id above ``since``, oldest first."""
    rows = db.fetch_all(
        "SELECT id, profile_id, kind, contact, text, data, created_at FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (since, limit),
    )
    return [StoredEvent(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]


def last_event_id(db: Database) -> int:
    row = db.fetch_one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    return row[0] if row else 0
