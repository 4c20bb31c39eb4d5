"""Sans-IO relay sessions: ``NodeSession`` (node side) and ``ClientSession``.

Bring your own I/O, as in h11: feed received bytes to ``receive_data``, pull
events with ``next_event`` until it returns ``NEED_DATA``, and write whatever
``data_to_send``/``send`` return. Bytes may arrive in any chunking; blocks are
exactly ``BLOCK_SIZE`` bytes. docs/protocol/relay.md, "Handshake":

1. node -> client: node hello (plaintext block, signed by the node key)
2. client -> node: client hello (plaintext block: chosen version, client key)
3. node -> client: welcome (plaintext block: version, or an ERR)
4. every later block in either direction is sealed with the session keys.
"""

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import crypto
from .block import BlockBuffer, pad, unpad
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .fields import FieldError, check_map
from .frames import (
    CLIENT_HELLO,
    MAX_DETAIL,
    NODE_HELLO,
    NODE_HELLO_BODY,
    Command,
    Error,
    Ok,
    Response,
    SubscriptionEnded,
    Transmission,
    TransmissionError,
    check_transmission,
    decode_response,
    encode_body,
    encode_response,
    packb,
    read_transmission,
    session_may_authenticate,
    unpackb,
)
from .versions import (
    BLOCK_SIZE,
    CORR_ID_SIZE,
    MAX_BATCH,
    MAX_CORR,
    MAX_VERSION,
    MIN_VERSION,
    SEALED_CONTENT_SIZE,
    UNREAD_CORR,
    version_name,
    version_range,
)

CORRS_USED_UP = "correlation ids used up (the greatest one was used): open a new session"

NEED_DATA = "NEED_DATA"
"""Sentinel returned by ``next_event`` when a whole block has not arrived yet."""

_ROOM = SEALED_CONTENT_SIZE - 2


# --- Events ------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """The handshake completed (client side: after the welcome; node side: after the client hello)."""

    version: int
    session_id: bytes


@dataclass(frozen=True)
class CommandReceived:
    """Node side: a well-formed command for this session. Signature not yet checked."""

    transmission: Transmission


@dataclass(frozen=True)
class CommandRejected:
    """Node side: a transmission the node must answer with ``ERR code``."""

    corr: bytes | None
    queue: bytes | None
    code: ErrorCode
    detail: str


@dataclass(frozen=True)
class Reply:
    """Client side: a response (``corr`` set) or a push (``corr`` None)."""

    corr: bytes | None
    queue: bytes | None
    response: Response


def pack_batches(items: Sequence[bytes]) -> list[bytes]:
    """Group packed items into msgpack arrays that each fit one block's content."""
    batches: list[list[bytes]] = []
    size = 0
    for item in items:
        if len(item) + 3 > _ROOM:
            raise LocalProtocolError(ErrorCode.LARGE, f"item of {len(item)} bytes does not fit a block")
        if not batches or len(batches[-1]) == MAX_BATCH or size + len(item) + 3 > _ROOM:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += len(item)
    return [_array_header(len(b)) + b"".join(b) for b in batches]


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


def _decode_array(content: bytes, what: str) -> list:
    items = unpackb(content, ErrorCode.BLOCK, what)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise RemoteProtocolError(ErrorCode.BLOCK, f"{what} must be an array of 1 to {MAX_BATCH} items")
    return items


class _Session:
    def __init__(self) -> None:
        self._incoming = BlockBuffer(BLOCK_SIZE)
        self._outgoing = bytearray()
        self._events: list = []  # a list, not a deque: an idle node session keeps 56 bytes, not 1.5 KB
        self._sealer: crypto.BlockCipher | None = None
        self._opener: crypto.BlockCipher | None = None
        self.closed = False
        self.version: int | None = None
        self.session_id: bytes | None = None

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            raise LocalProtocolError(ErrorCode.BLOCK, "session is closed")
        self._incoming.feed(data)

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def next_event(self):
        """Return the next event, or NEED_DATA.

        Raises:
            RemoteProtocolError: the peer broke the protocol; the session is
                closed (the node should first send ``fatal_error``'s bytes).
        """
        while not self._events:
            block = self._incoming.next_block()
            if block is None:
                return NEED_DATA
            try:
                self._handle_block(block)
            except RemoteProtocolError:
                self.closed = True
                raise
        return self._events.pop(0)  # at most MAX_BATCH events per block

    def _seal_contents(self, contents: Iterable[bytes]) -> bytes:
        if self._sealer is None:
            raise LocalProtocolError(ErrorCode.HANDSHAKE, "handshake not complete")
        return b"".join(self._sealer.seal(c) for c in contents)

    def _handle_block(self, block: bytes) -> None:
        raise NotImplementedError


# --- Node side -------------------------------------------------------------------


class NodeSession(_Session):
    """The node's end of one client connection."""

    def __init__(
        self,
        identity_public: bytes,
        identity_secret: bytes,
        *,
        rng: crypto.Rng = os.urandom,
        min_version: int = MIN_VERSION,
        max_version: int = MAX_VERSION,
    ):
        super().__init__()
        self._min_version, self._max_version = min_version, max_version
        self.session_id = rng(32)
        self._dh_public, self._dh_secret = crypto.dh_keypair(rng)
        self._last_corr = b""
        # Step 1: node hello, signed so the client knows it reached the node its address names.
        body = packb(
            {"vmin": min_version, "vmax": max_version, "sess": self.session_id, "skey": self._dh_public, "node": identity_public}
        )
        hello = {"hello": body, "sig": crypto.sign(identity_secret, crypto.HELLO_DOMAIN, body)}
        self._outgoing += pad(packb(hello), BLOCK_SIZE)

    def _handle_block(self, block: bytes) -> None:
        if self._opener is None:
            self._handle_client_hello(block)
            return
        items = _decode_array(self._opener.open(block), "command block")
        for item in items:
            self._events.append(self._check_transmission(item))

    def _handle_client_hello(self, block: bytes) -> None:
        raw = unpackb(unpad(block, BLOCK_SIZE), ErrorCode.HANDSHAKE, "client hello")
        try:
            hello = check_map(raw, CLIENT_HELLO, "client hello")
        except FieldError as exc:
            raise RemoteProtocolError(ErrorCode.HANDSHAKE, str(exc)) from None
        if not self._min_version <= hello["v"] <= self._max_version:
            raise RemoteProtocolError(
                ErrorCode.VERSION,
                f"protocol {version_name(hello['v'])} not supported: this node speaks "
                f"{version_range(self._min_version, self._max_version)}",
            )
        shared = crypto.dh(self._dh_secret, hello["ckey"])
        c2s, s2c = crypto.transport_keys(shared, self.session_id)
        self._opener, self._sealer = crypto.BlockCipher(c2s), crypto.BlockCipher(s2c)
        self.version = hello["v"]
        # Step 3: welcome.
        self._outgoing += pad(packb({"v": self.version}), BLOCK_SIZE)
        self._events.append(Connected(self.version, self.session_id))

    def _check_transmission(self, item: object):
        """relay.md "Transmissions": read the corr, check and use it up, then check the rest."""
        try:
            raw = read_transmission(item)
        except TransmissionError as exc:
            return CommandRejected(UNREAD_CORR, None, exc.code, exc.message)
        if raw.corr <= self._last_corr:
            detail = CORRS_USED_UP if self._last_corr == MAX_CORR else "correlation id not greater than the previous one"
            return CommandRejected(raw.corr, None, ErrorCode.REPLAY, detail)
        self._last_corr = raw.corr  # used up, whatever the answer
        try:
            t = check_transmission(raw)
        except TransmissionError as exc:
            return CommandRejected(raw.corr, exc.queue, exc.code, exc.message)
        if t.session != self.session_id:
            return CommandRejected(t.corr, t.queue, ErrorCode.SESSION, "command was signed for another session")
        return CommandReceived(t)

    def send(self, replies: Sequence[tuple[bytes | None, bytes | None, Response]]) -> bytes:
        """Encode replies ``(corr, queue, response)`` into as few sealed blocks as fit."""
        if not replies:
            return b""
        items = [packb(encode_response(c, q, r)) for c, q, r in replies]
        return self._seal_contents(pack_batches(items))

    def fatal_error(self, code: ErrorCode, detail: str) -> bytes:
        """Bytes of a final ERR to send before closing (plaintext before the handshake)."""
        self.closed = True
        content = packb([encode_response(None, None, Error(code.value, detail[:MAX_DETAIL]))])
        if self._sealer is None:
            return pad(content, BLOCK_SIZE)
        return self._sealer.seal(content)


# --- Client side -------------------------------------------------------------------


class ClientSession(_Session):
    """A client's (or forwarding node's) end of a connection to one node."""

    def __init__(
        self,
        node_key: bytes,
        *,
        rng: crypto.Rng = os.urandom,
        min_version: int = MIN_VERSION,
        max_version: int = MAX_VERSION,
    ):
        super().__init__()
        self._node_key = node_key
        self._rng = rng
        self._min_version, self._max_version = min_version, max_version
        self._counter = 0
        self._state = "AWAIT_HELLO"
        self._subscribed: set[bytes] = set()
        """Queues whose SUB this session got OK for, with no END or DEL since (relay.md "Signatures", 1.2)."""
        self._awaiting: dict[bytes, tuple[str, bytes]] = {}
        """corr -> (SUB, DEL or UNSIGNED, queue) until answered: a SUB's OK subscribes, a DEL's OK or an
        AUTH answer to a command sent unsigned (the subscription ended first) unsubscribes."""

    @property
    def ready(self) -> bool:
        """True once commands may be sent (after the node hello; the welcome may still be on its way)."""
        return self._sealer is not None and not self.closed

    def _handle_block(self, block: bytes) -> None:
        if self._state == "AWAIT_HELLO":
            self._handle_node_hello(block)
        elif self._state == "AWAIT_WELCOME":
            self._handle_welcome(block)
        else:
            for item in _decode_array(self._opener.open(block), "response block"):
                corr, queue, response = decode_response(item)
                self._track_subscriptions(corr, queue, response)
                self._events.append(Reply(corr, queue, response))

    def _track_subscriptions(self, corr: bytes | None, queue: bytes | None, response: Response) -> None:
        if corr is None:
            if isinstance(response, SubscriptionEnded) and queue is not None:
                self._subscribed.discard(queue)
            return
        sent = self._awaiting.pop(corr, None)
        if sent is None:
            return
        name, queue = sent
        if isinstance(response, Ok) and name in ("SUB", "DEL"):
            (self._subscribed.add if name == "SUB" else self._subscribed.discard)(queue)
        elif isinstance(response, Error) and response.code == ErrorCode.AUTH.value and name == "UNSIGNED":
            self._subscribed.discard(queue)  # the node no longer counts this session as subscribed

    def subscribed(self, queue: bytes) -> bool:
        """True if this session is subscribed to ``queue``: its SUB was answered OK, no END or DEL since."""
        return queue in self._subscribed

    def signs_by_session(self, command: Command, queue: bytes | None) -> bool:
        """True if ``command`` goes unsigned, authenticated by this session (1.2: GET or ACK on a
        queue this session is subscribed to); ``transmission`` then drops the signing key."""
        return queue in self._subscribed and session_may_authenticate(self.version, command)

    def _handle_node_hello(self, block: bytes) -> None:
        raw = unpackb(unpad(block, BLOCK_SIZE), ErrorCode.HANDSHAKE, "node hello")
        try:
            outer = check_map(raw, NODE_HELLO, "node hello")
            hello = check_map(unpackb(outer["hello"], ErrorCode.HANDSHAKE, "node hello body"), NODE_HELLO_BODY, "node hello body")
        except FieldError as exc:
            raise RemoteProtocolError(ErrorCode.HANDSHAKE, str(exc)) from None
        if hello["node"] != self._node_key or not crypto.verify(
            self._node_key, crypto.HELLO_DOMAIN, outer["hello"], outer["sig"]
        ):
            raise RemoteProtocolError(ErrorCode.HANDSHAKE, "node hello is not signed by the key in the node's address")
        version = min(self._max_version, hello["vmax"])
        if version < max(self._min_version, hello["vmin"]):
            raise RemoteProtocolError(
                ErrorCode.VERSION,
                f"the node speaks protocol {version_range(hello['vmin'], hello['vmax'])}, "
                f"this client {version_range(self._min_version, self._max_version)}",
            )
        ckey, csecret = crypto.dh_keypair(self._rng)
        c2s, s2c = crypto.transport_keys(crypto.dh(csecret, hello["skey"]), hello["sess"])
        self._sealer, self._opener = crypto.BlockCipher(c2s), crypto.BlockCipher(s2c)
        self.session_id, self.version = hello["sess"], version
        self._outgoing += pad(packb({"v": version, "ckey": ckey}), BLOCK_SIZE)
        self._state = "AWAIT_WELCOME"

    def _handle_welcome(self, block: bytes) -> None:
        raw = unpackb(unpad(block, BLOCK_SIZE), ErrorCode.HANDSHAKE, "welcome")
        if isinstance(raw, list) and raw:  # the node refused the hello: [ERR]
            _, _, response = decode_response(raw[0])
            if isinstance(response, Error):
                code = response.error_code or ErrorCode.HANDSHAKE
                raise RemoteProtocolError(code, f"node refused the handshake: {response.detail or response.code}")
        try:
            welcome = check_map(raw, {"v": CLIENT_HELLO["v"]}, "welcome")
        except FieldError as exc:
            raise RemoteProtocolError(ErrorCode.HANDSHAKE, str(exc)) from None
        if welcome["v"] != self.version:
            raise RemoteProtocolError(
                ErrorCode.VERSION, f"node welcomed protocol {version_name(welcome['v'])}, we asked for {version_name(self.version)}"
            )
        self._state = "CONNECTED"
        self._events.append(Connected(self.version, self.session_id))

    def next_corr(self) -> bytes:
        """A fresh correlation id: 8-byte counter then 16 random bytes, so ids only grow (2**64 of them)."""
        self._counter += 1
        return self._counter.to_bytes(8, "big") + self._rng(CORR_ID_SIZE - 8)

    def transmission(self, command: Command, queue: bytes | None = None, signing_key: bytes | None = None) -> tuple[bytes, bytes]:
        """Build one transmission, signed with ``signing_key`` unless the session authenticates it
        (``signs_by_session``); return (corr, packed transmission)."""
        if not self.ready:
            raise LocalProtocolError(ErrorCode.HANDSHAKE, "cannot send commands before the node hello")
        if command.NEEDS_QUEUE != (queue is not None):
            raise LocalProtocolError(ErrorCode.SYNTAX, f"{command.NAME} {'needs' if command.NEEDS_QUEUE else 'takes no'} queue id")
        corr = self.next_corr()
        sign = signing_key and not self.signs_by_session(command, queue)
        if command.NAME in ("SUB", "DEL") or (signing_key and not sign):
            self._awaiting[corr] = (command.NAME if sign else "UNSIGNED", queue)
        body = encode_body(self.session_id, corr, queue, command)
        signature = crypto.sign(signing_key, crypto.COMMAND_DOMAIN, body) if sign else b""
        return corr, packb([signature, body])

    def send(self, commands: Sequence[tuple[Command, bytes | None, bytes | None]]) -> tuple[bytes, list[bytes]]:
        """Encode ``(command, queue, signing secret key or None)`` tuples.

        Returns:
            (bytes to write, the correlation id of each command in order).
        """
        built = [self.transmission(c, q, k) for c, q, k in commands]
        return self.send_packed([t for _, t in built]), [c for c, _ in built]

    def send_packed(self, transmissions: Sequence[bytes]) -> bytes:
        """Seal already-built transmissions (from :meth:`transmission`) into blocks, in order."""
        return self._seal_contents(pack_batches(list(transmissions)))
