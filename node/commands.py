"""Command dispatch: from a checked transmission to its answer and pushes.

Stored-state commands go to the ``Mailbox`` through the ``Committer`` and
are answered after the commit; the answers then update the subscriptions
(relay.md "SUB", "ACK", "DEL") in commit order. PING is answered at once,
FWD waits on the destination node in its own task.
"""

import logging
import os
import time
from collections.abc import Callable
from functools import partial

from onionpost.proto import (
    Ack,
    AddressError,
    Delete,
    Error,
    ErrorCode,
    Forward,
    ForwardResult,
    Get,
    New,
    Ok,
    Ping,
    Pong,
    RelayForward,
    RelayForwardResult,
    RemoteProtocolError,
    SecureQueue,
    Send,
    Subscribe,
    SubscriptionEnded,
    Suspend,
    Transmission,
    parse_node_address,
)
from onionpost.proto import crypto, forward
from onionpost.proto.frames import session_may_authenticate

from .committer import Committer, internal_error
from .connection import Slot, error
from .datadir import Identity
from .forwarder import Forwarder
from .mailbox import Acked, Mailbox, Stored, Subscribed
from .subscriptions import Subscriptions

log = logging.getLogger(__name__)

UNSIGNED = (Ping, Forward, RelayForward)
"""relay.md "Signatures": these carry an empty signature; a signature is AUTH."""


class Dispatcher:
    def __init__(
        self,
        identity: Identity,
        mailbox: Mailbox,
        committer: Committer,
        subscriptions: Subscriptions,
        forwarder: Forwarder,
        *,
        clock: Callable[[], float] = time.time,
        rng: crypto.Rng = os.urandom,
    ):
        self.identity = identity
        self.mailbox = mailbox
        self.committer = committer
        self.subscriptions = subscriptions
        self.forwarder = forwarder
        self.clock = clock
        self.rng = rng
        self.trace = None
        """A ``trace.RelayTrace`` when the node runs with --trace (private test networks only)."""
        self.on_delete: Callable[[], None] = lambda: None
        """Called after a commit that deleted data (DEL, a successful ACK): the node purges its WAL soon."""
        self._handlers = {
            New: self._new,
            SecureQueue: self._simple(mailbox.secure),
            Subscribe: self._subscribe,
            Get: self._simple(mailbox.get),
            Ack: self._ack,
            Suspend: self._simple(mailbox.suspend),
            Delete: self._delete,
            Send: self._send,
            Ping: self._ping,
            Forward: self._forward,
            RelayForward: self._relay_forward,
        }

    def dispatch(self, conn, t: Transmission, slot: Slot) -> None:
        if self.trace is not None:
            self.trace.command(conn, t.command.NAME, t.queue)
        handler = self._handlers.get(type(t.command))
        if handler is None:
            slot.answer(error(ErrorCode.CMD, f"command {t.command.NAME} is not handled here"))
            return
        if t.signature and type(t.command) in UNSIGNED:
            slot.answer(error(ErrorCode.AUTH, f"{t.command.NAME} must be unsigned"))
            return
        if not t.signature and session_may_authenticate(conn.session.version, t.command):
            # relay.md "Signatures" (1.2): the session's own signed SUB authenticates it, nothing else does.
            if self.subscriptions.subscriber(t.queue) is not conn:
                slot.answer(error(ErrorCode.AUTH, f"unsigned {t.command.NAME}: this session is not subscribed to the queue"))
                return
            t = Transmission(t.signature, t.body, t.session, t.corr, t.queue, t.command, by_session=True)
        try:
            handler(conn, t, slot)
        except Exception as exc:  # never a traceback to the client: INTERNAL, nothing applied
            log.error("%s failed: %s", t.command.NAME, type(exc).__name__)
            slot.answer(internal_error())

    def store_full(self) -> bool:
        """True while sessions should stop reading commands (see ``Committer.room``)."""
        return self.committer.full

    async def store_room(self) -> None:
        await self.committer.room()

    def session_closed(self, conn) -> None:
        self.subscriptions.drop_session(conn)

    def _store(self, slot: Slot, operation, on_result) -> None:
        """Run ``operation`` in the store; ERR goes straight to the slot, anything else to ``on_result``."""

        def done(result):
            if isinstance(result, Error):
                slot.answer(result)
            else:
                on_result(result)

        self.committer.submit(operation, done)

    def _simple(self, method):
        def handler(conn, t: Transmission, slot: Slot) -> None:
            self._store(slot, partial(method, t), slot.answer)

        return handler

    def _push(self, conn, target, queue: bytes, response, attached: list) -> None:
        """Push to ``target``: after this command's answer if it is this session, else at once."""
        if target is None:
            return
        if self.trace is not None:
            self.trace.pushed(target, queue)
        if target is conn:
            attached.append((queue, response))
        else:
            target.push(queue, response)

    # --- recipient commands --------------------------------------------------------------

    def _new(self, conn, t: Transmission, slot: Slot) -> None:
        def created(ids) -> None:
            if self.trace is not None:
                self.trace.created(ids.rid, ids.snd)
            slot.answer(ids)

        self._store(slot, partial(self.mailbox.new, t), created)

    def _subscribe(self, conn, t: Transmission, slot: Slot) -> None:
        def subscribed(result: Subscribed) -> None:
            if conn.closed:
                return
            previous = self.subscriptions.subscribe(t.queue, conn, result.message)
            if previous is not None:
                previous.push(t.queue, SubscriptionEnded())
            if result.message and self.trace is not None:
                self.trace.pushed(conn, t.queue)
            slot.answer(Ok(), [(t.queue, result.message)] if result.message else [])

        self._store(slot, partial(self.mailbox.subscribe, t), subscribed)

    def _ack(self, conn, t: Transmission, slot: Slot) -> None:
        def acked(result: Acked) -> None:
            if result.ok:
                self.on_delete()
            attached: list = []
            target = self.subscriptions.acked(t.queue, t.command.mid, result.ok, result.next)
            self._push(conn, target, t.queue, result.next, attached)
            answer = Ok() if result.ok else error(ErrorCode.NO_MSG, "not the current message")
            slot.answer(answer, attached)

        self._store(slot, partial(self.mailbox.ack, t), acked)

    def _delete(self, conn, t: Transmission, slot: Slot) -> None:
        def deleted(result: Ok) -> None:
            self.on_delete()
            subscriber = self.subscriptions.unsubscribe(t.queue)
            if subscriber is not None and subscriber is not conn:
                subscriber.push(t.queue, SubscriptionEnded())
            slot.answer(Ok())

        self._store(slot, partial(self.mailbox.delete, t), deleted)

    # --- sending ---------------------------------------------------------------------------

    def _send(self, conn, t: Transmission, slot: Slot) -> None:
        def stored(result: Stored) -> None:
            attached: list = []
            self._deliver(conn, result, attached)
            slot.answer(Ok(), attached)

        self._store(slot, partial(self.mailbox.send, t), stored)

    def _deliver(self, conn, stored: Stored, attached: list) -> None:
        if stored.message is None:  # a retry recognised by its token: nothing new to deliver
            return
        target = self.subscriptions.arrived(stored.rid, stored.message)
        self._push(conn, target, stored.rid, stored.message, attached)

    def _ping(self, conn, t: Transmission, slot: Slot) -> None:
        slot.answer(Pong())

    # --- forwarding ---------------------------------------------------------------------------

    def _relay_forward(self, conn, t: Transmission, slot: Slot) -> None:
        self._open_and_apply(conn, t.command.env, slot, RelayForwardResult)

    def _open_and_apply(self, conn, envelope: bytes, slot: Slot, wrap) -> None:
        """relay.md "Forwarding": open the envelope, apply its SEND, answer ``wrap(env=sealed answer)``.

        An envelope that cannot be opened is answered with a plain ERR ENVELOPE; once it is open,
        every answer (refusals of its content, the SEND's result, INTERNAL) is sealed inside.
        """
        try:
            opened = forward.open_envelope(self.identity.secret, envelope, int(self.clock()))
        except forward.SealedRefusal as exc:
            slot.answer(wrap(env=forward.seal_response(exc.response_key, error(exc.code, exc.message), self.rng)))
            return
        except RemoteProtocolError as exc:
            slot.answer(error(ErrorCode.ENVELOPE, exc.message))
            return

        if self.trace is not None:
            self.trace.command(conn, "SEND", opened.transmission.queue, via="forward")

        def applied(result) -> None:
            attached: list = []
            if isinstance(result, Error):  # the store failed: INTERNAL, nothing applied
                response = result
            else:
                response = result.response
                if result.stored is not None:
                    self._deliver(conn, result.stored, attached)
            slot.answer(wrap(env=forward.seal_response(opened.response_key, response, self.rng)), attached)

        self.committer.submit(partial(self.mailbox.relay_send, opened), applied)

    def _forward(self, conn, t: Transmission, slot: Slot) -> None:
        try:
            address = parse_node_address(t.command.node)
        except AddressError as exc:
            slot.answer(error(ErrorCode.SYNTAX, str(exc)))
            return
        if address.key == self.identity.public:  # our own node: no need to go through the network
            self._open_and_apply(conn, t.command.env, slot, ForwardResult)
            return

        async def forward_remote() -> None:
            try:
                slot.answer(await self.forwarder.forward(address, t.command.env))
            except Exception as exc:
                log.error("FWD failed: %s", type(exc).__name__)
                slot.answer(internal_error())

        conn.spawn(forward_remote())
