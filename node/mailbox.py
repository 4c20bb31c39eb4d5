"""Queue semantics: what each stored-state command does (docs/protocol/relay.md, "Command reference").

``Mailbox`` is synchronous and knows nothing of sessions or sockets: each
method takes a decoded ``Transmission``, checks its signature against the
stored keys, applies the command to the ``QueueStore`` and returns a result,
or raises ``Refused`` before writing anything. The committer runs these
methods inside a transaction, one savepoint each.
"""

import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from onionpost.proto import Error, ErrorCode, Message, NoMessage, Ok, QueueIds, Transmission
from onionpost.proto import crypto, delivery, forward
from onionpost.proto.errors import RemoteProtocolError
from onionpost.proto.versions import QUEUE_ID_SIZE

from .config import NodeConfig
from .store import QueueRecord, QueueStore

MESSAGE_ID_SIZE = 16
"""Message ids are random, so they reveal nothing about other traffic through the node."""
TOKEN_TTL = 900
"""Seconds a stored SEND's token is kept: a retry within this time is answered OK and stores nothing."""


class Refused(Exception):
    """The command is refused with ``ERR code``; nothing was applied."""

    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Subscribed:
    """SUB accepted; ``message`` is the oldest message to push, if any."""

    message: Message | None


@dataclass(frozen=True)
class Acked:
    """ACK result: ``ok`` False means NO_MSG; ``next`` is the oldest message now."""

    ok: bool
    next: Message | None


@dataclass(frozen=True)
class Stored:
    """SEND accepted: the message, stored in queue ``rid``; None for a retry of a stored SEND (nothing stored again)."""

    rid: bytes
    message: Message | None


@dataclass(frozen=True)
class Relayed:
    """RFWD opened and applied: ``response`` (OK or ERR) goes back sealed; ``stored`` if accepted."""

    response: Ok | Error
    stored: Stored | None


class Mailbox:
    def __init__(
        self,
        store: QueueStore,
        config: NodeConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: crypto.Rng = os.urandom,
    ):
        self.store = store
        self.config = config
        self.clock = clock
        self.rng = rng

    def _now(self) -> int:
        return int(self.clock())

    def _since(self) -> int:
        """Receive time of the oldest message still alive (older ones are expired)."""
        return self._now() - self.config.ttl

    # --- recipient commands ---------------------------------------------------------

    def new(self, t: Transmission) -> QueueIds:
        cmd = t.command
        if not crypto.usable_signing_key(cmd.rkey):
            raise Refused(ErrorCode.SYNTAX, "rkey is not a usable Ed25519 public key")
        if not crypto.verify(cmd.rkey, crypto.COMMAND_DOMAIN, t.body, t.signature):
            raise Refused(ErrorCode.AUTH, "NEW must be signed with its rkey")
        if self.config.access_keys and not self._access_allowed(cmd.akey):
            raise Refused(ErrorCode.ACCESS, "this node needs a valid access key to create queues")
        # relay.md "NEW": only the derived queue key is stored; the node's DH secret is dropped here.
        node_public, node_secret = crypto.dh_keypair(self.rng)
        try:
            queue_key = crypto.queue_secret(node_secret, cmd.dhkey)
        except RemoteProtocolError:
            raise Refused(ErrorCode.SYNTAX, "dhkey is not a usable X25519 key") from None
        rid, snd = self.rng(QUEUE_ID_SIZE), self.rng(QUEUE_ID_SIZE)
        self.store.add_queue(QueueRecord(rid=rid, snd=snd, rkey=cmd.rkey, skey=None, queue_key=queue_key))
        return QueueIds(rid=rid, snd=snd, dhkey=node_public)

    def _access_allowed(self, akey: str | None) -> bool:
        given = (akey or "").encode()
        allowed = False
        for key in self.config.access_keys:  # compare with every key, in constant time each
            allowed |= hmac.compare_digest(given, key.encode())
        return allowed and akey is not None

    def secure(self, t: Transmission) -> Ok:
        if not crypto.usable_signing_key(t.command.skey):
            raise Refused(ErrorCode.SYNTAX, "skey is not a usable Ed25519 public key")
        queue = self._recipient_queue(t)
        if queue.skey is None:
            self.store.set_sender_key(queue.rid, t.command.skey)
        elif not hmac.compare_digest(queue.skey, t.command.skey):
            raise Refused(ErrorCode.SECURED, "the queue is already secured with another key")
        return Ok()

    def subscribe(self, t: Transmission) -> Subscribed:
        queue = self._recipient_queue(t)
        return Subscribed(self._oldest(queue.rid))

    def get(self, t: Transmission) -> Message | NoMessage:
        queue = self._recipient_queue(t)
        return self._oldest(queue.rid) or NoMessage()

    def ack(self, t: Transmission) -> Acked:
        queue = self._recipient_queue(t)
        deleted = self.store.delete_oldest(queue.rid, self._since(), t.command.mid)
        return Acked(deleted, self._oldest(queue.rid))

    def suspend(self, t: Transmission) -> Ok:
        queue = self._recipient_queue(t)
        if not queue.suspended:
            self.store.suspend(queue.rid)
        return Ok()

    def delete(self, t: Transmission) -> Ok:
        queue = self._recipient_queue(t)
        self.store.delete_queue(queue.rid)
        return Ok()

    def _recipient_queue(self, t: Transmission) -> QueueRecord:
        queue = self.store.queue_by_rid(t.queue)
        if queue is None:
            raise Refused(ErrorCode.NO_QUEUE, "no such queue")
        if not t.by_session and not crypto.verify(queue.rkey, crypto.COMMAND_DOMAIN, t.body, t.signature):
            raise Refused(ErrorCode.AUTH, "not signed with the queue's recipient key")
        return queue

    def oldest(self, rid: bytes) -> Message | None:
        """The queue's oldest live message, for a push (another backend stored it: ``node.cluster``)."""
        return self._oldest(rid)

    def _oldest(self, rid: bytes) -> Message | None:
        return _message(self.store.oldest_message(rid, self._since()))

    # --- sending ---------------------------------------------------------------------

    def send(self, t: Transmission) -> Stored:
        """SEND on a sender id, direct or forwarded (relay.md "SEND")."""
        queue = self.store.queue_by_sender(t.queue)
        if queue is None:
            raise Refused(ErrorCode.NO_QUEUE, "no such queue")
        unsigned = queue.skey is None
        if unsigned and t.signature:
            raise Refused(ErrorCode.AUTH, "SEND to an unsecured queue must be unsigned")
        if not unsigned and not crypto.verify(queue.skey, crypto.COMMAND_DOMAIN, t.body, t.signature):
            raise Refused(ErrorCode.AUTH, "not signed with the queue's sender key")
        token = None if t.command.tok is None else crypto.token_key(queue.rid, t.command.tok)
        if token is not None and self.store.token_seen(token):
            return Stored(queue.rid, None)  # a retry: the original answer was OK
        if queue.suspended:
            raise Refused(ErrorCode.SUSPENDED, "the queue is suspended")
        if unsigned and queue.unsigned_sends >= self.config.unsecured_limit:
            raise Refused(ErrorCode.LIMIT, "no more unsigned sends are accepted on this queue")
        now = self._now()
        if self.store.count_messages(queue.rid, now - self.config.ttl, self.config.quota) >= self.config.quota:
            raise Refused(ErrorCode.QUOTA, "the queue is full; retry later")
        mid = self.rng(MESSAGE_ID_SIZE)
        box = delivery.seal_message(queue.queue_key, now, t.command.body, self.rng)
        self.store.add_message(queue.rid, mid, now, box)
        if token is not None:
            self.store.remember_token(token, _next_minute(now + TOKEN_TTL))
        if unsigned:
            self.store.count_unsigned_send(queue.rid)
        return Stored(queue.rid, Message(mid=mid, box=box))

    def relay_send(self, opened: forward.OpenedEnvelope) -> Relayed:
        """Apply an opened forwarding envelope (relay.md "Forwarding", steps 2-3).

        The envelope key is recorded in the same transaction as the message,
        and also when the SEND inside is refused: the envelope is spent either way.

        A replayed envelope (its key was seen before) is answered ERR ENVELOPE, inside the sealed answer.
        """
        expires = self._now() + 2 * forward.MAX_ENVELOPE_AGE
        if not self.store.remember_envelope(opened.ephemeral_key, expires):
            if self._stored_before(opened.transmission):
                return Relayed(Ok(), None)  # the same envelope again, for a SEND stored the first time
            return Relayed(Error(ErrorCode.ENVELOPE.value, "replayed"), None)
        try:
            with self.store.savepoint():
                stored = self.send(opened.transmission)
        except Refused as exc:
            return Relayed(Error(exc.code.value, exc.detail), None)
        return Relayed(Ok(), stored)

    def _stored_before(self, t: Transmission) -> bool:
        if t.command.tok is None:
            return False
        queue = self.store.queue_by_sender(t.queue)
        return queue is not None and self.store.token_seen(crypto.token_key(queue.rid, t.command.tok))

    # --- maintenance -------------------------------------------------------------------

    def sweep(self) -> int:
        """Delete expired messages and envelope keys; return how many messages went."""
        return self.store.expire(self._since(), self._now())


def _next_minute(seconds: int) -> int:
    """Token expiry times are kept to the minute: they say no more than that about when messages came."""
    return (seconds // 60 + 1) * 60


def _message(stored) -> Message | None:
    return None if stored is None else Message(mid=stored.mid, box=stored.box)
