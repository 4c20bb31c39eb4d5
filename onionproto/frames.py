"""Commands, responses and hellos of relay protocol v1, and their msgpack forms.

docs/protocol/relay.md, "Commands" and "Responses". The tables below are the
single source of truth for field names and types; a test checks that the
spec's tables match them (``tests/unit/proto/test_spec_tables.py``).
"""

from dataclasses import dataclass, fields
from typing import ClassVar

import msgpack

from .errors import ErrorCode, RemoteProtocolError
from .fields import Bin, FieldError, Int, Optional, Str, check_map
from .versions import (
    CORR_ID_SIZE,
    KEY_SIZE,
    MAX_ACCESS_KEY_LENGTH,
    MAX_ADDRESS_LENGTH,
    MAX_BODY,
    QUEUE_ID_SIZE,
    SEALED_CONTENT_SIZE,
    SESSION_ID_SIZE,
    SIGNATURE_SIZE,
    PROTOCOL_V1_2,
    TOKEN_SIZE,
    UNREAD_CORR,
)

KEY = Bin(KEY_SIZE)
MAX_DETAIL = 200
"""ERR details are cut to this many characters."""
QUEUE_ID = Bin(QUEUE_ID_SIZE)
MESSAGE_ID = Bin(max_size=24)
ENVELOPE = Bin(max_size=SEALED_CONTENT_SIZE)

# --- Commands (client -> node) -------------------------------------------------


@dataclass(frozen=True)
class Command:
    NAME: ClassVar[str]
    FIELDS: ClassVar[dict] = {}
    NEEDS_QUEUE: ClassVar[bool] = False
    """True if the transmission's "q" names a queue; otherwise "q" is nil."""


@dataclass(frozen=True)
class New(Command):
    """Create a queue. Signed with ``rkey``."""

    NAME = "NEW"
    FIELDS = {"rkey": KEY, "dhkey": KEY, "akey": Optional(Str(MAX_ACCESS_KEY_LENGTH))}
    rkey: bytes
    dhkey: bytes
    akey: str | None = None


@dataclass(frozen=True)
class SecureQueue(Command):
    """Set the sender key, once. Signed with the recipient key."""

    NAME = "KEY"
    FIELDS = {"skey": KEY}
    NEEDS_QUEUE = True
    skey: bytes


@dataclass(frozen=True)
class Subscribe(Command):
    NAME = "SUB"
    NEEDS_QUEUE = True


@dataclass(frozen=True)
class Get(Command):
    NAME = "GET"
    NEEDS_QUEUE = True


@dataclass(frozen=True)
class Ack(Command):
    NAME = "ACK"
    FIELDS = {"mid": MESSAGE_ID}
    NEEDS_QUEUE = True
    mid: bytes


@dataclass(frozen=True)
class Suspend(Command):
    NAME = "OFF"
    NEEDS_QUEUE = True


@dataclass(frozen=True)
class Delete(Command):
    NAME = "DEL"
    NEEDS_QUEUE = True


@dataclass(frozen=True)
class Send(Command):
    """Send to a queue by its sender id. Signed with the sender key once secured.

    ``tok`` (1.1): an idempotency token, the same in every retry of one message; the node answers a
    retry of a stored SEND with the original OK and stores nothing (relay.md "SEND").
    """

    NAME = "SEND"
    FIELDS = {"body": Bin(max_size=MAX_BODY), "tok": Optional(Bin(TOKEN_SIZE))}
    NEEDS_QUEUE = True
    body: bytes
    tok: bytes | None = None


@dataclass(frozen=True)
class Ping(Command):
    NAME = "PING"


@dataclass(frozen=True)
class Forward(Command):
    """Client asks its own node to carry an envelope to another node."""

    NAME = "FWD"
    FIELDS = {"node": Str(MAX_ADDRESS_LENGTH), "env": ENVELOPE}
    node: str
    env: bytes


@dataclass(frozen=True)
class RelayForward(Command):
    """Forwarding node hands an envelope to the destination node."""

    NAME = "RFWD"
    FIELDS = {"env": ENVELOPE}
    env: bytes


COMMANDS: dict[str, type[Command]] = {
    c.NAME: c
    for c in (New, SecureQueue, Subscribe, Get, Ack, Suspend, Delete, Send, Ping, Forward, RelayForward)
}
RECIPIENT_COMMANDS = frozenset({"KEY", "SUB", "GET", "ACK", "OFF", "DEL"})
SESSION_AUTHENTICATED = frozenset({"GET", "ACK"})
"""1.2: recipient commands that may be unsigned on a queue the session is subscribed to (relay.md "Signatures")."""


def session_may_authenticate(version: int | None, command: "Command") -> bool:
    """True if, in a session of ``version``, ``command`` may be authenticated by the session's
    subscription instead of a signature (1.2 and later; GET and ACK only)."""
    return version is not None and version >= PROTOCOL_V1_2 and command.NAME in SESSION_AUTHENTICATED

# --- Responses (node -> client) ------------------------------------------------


@dataclass(frozen=True)
class Response:
    NAME: ClassVar[str]
    FIELDS: ClassVar[dict] = {}


@dataclass(frozen=True)
class QueueIds(Response):
    """Answer to NEW: the two unrelated ids and the node's queue DH key."""

    NAME = "IDS"
    FIELDS = {"rid": QUEUE_ID, "snd": QUEUE_ID, "dhkey": KEY}
    rid: bytes
    snd: bytes
    dhkey: bytes


@dataclass(frozen=True)
class Ok(Response):
    NAME = "OK"


@dataclass(frozen=True)
class Message(Response):
    """A message for the recipient: ``box`` = nonce ‖ secretbox(queue key, msgpack [ts, body])."""

    NAME = "MSG"
    FIELDS = {"mid": MESSAGE_ID, "box": Bin(max_size=MAX_BODY + 128)}
    mid: bytes
    box: bytes


@dataclass(frozen=True)
class NoMessage(Response):
    NAME = "NONE"


@dataclass(frozen=True)
class Pong(Response):
    NAME = "PONG"


@dataclass(frozen=True)
class SubscriptionEnded(Response):
    """Push: another session subscribed to this queue; this one gets no more messages."""

    NAME = "END"


@dataclass(frozen=True)
class ForwardResult(Response):
    NAME = "FRES"
    FIELDS = {"env": ENVELOPE}
    env: bytes


@dataclass(frozen=True)
class RelayForwardResult(Response):
    NAME = "RRES"
    FIELDS = {"env": ENVELOPE}
    env: bytes


@dataclass(frozen=True)
class Error(Response):
    NAME = "ERR"
    FIELDS = {"code": Str(32), "detail": Optional(Str(MAX_DETAIL))}
    code: str
    detail: str | None = None

    @property
    def error_code(self) -> ErrorCode | None:
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None


RESPONSES: dict[str, type[Response]] = {
    r.NAME: r
    for r in (QueueIds, Ok, Message, NoMessage, Pong, SubscriptionEnded, ForwardResult, RelayForwardResult, Error)
}

# --- msgpack -------------------------------------------------------------------


def packb(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpackb(data: bytes, code: ErrorCode, what: str):
    """Decode exactly one msgpack value; any failure is RemoteProtocolError(code)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types on garbage; all mean the same here
        raise RemoteProtocolError(code, f"{what} is not valid msgpack ({type(exc).__name__})") from None


def frame_args(frame: Command | Response) -> dict:
    """The frame's fields as a dict, without absent optional fields."""
    names = _FIELD_NAMES.get(type(frame))
    if names is None:
        names = _FIELD_NAMES[type(frame)] = tuple(f.name for f in fields(frame))
    return {name: value for name in names if (value := getattr(frame, name)) is not None}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
"""Each frame class's field names (``dataclasses.fields`` is slow on the per-message path)."""


# --- Transmissions ----------------------------------------------------------------


@dataclass(frozen=True)
class Transmission:
    """One decoded command as the node sees it, before signature checks.

    ``body`` is the exact signed byte string; the signature (if any) covers
    ``COMMAND_DOMAIN ‖ body``. ``by_session`` is set by the node (1.2): an unsigned GET or ACK on a
    queue this session is subscribed to, authenticated by the session instead of a signature.
    """

    signature: bytes
    body: bytes
    session: bytes
    corr: bytes
    queue: bytes | None
    command: Command
    by_session: bool = False


class TransmissionError(RemoteProtocolError):
    """A transmission that cannot be applied; ``corr``/``queue`` are set when known."""

    def __init__(self, code: ErrorCode, message: str, corr: bytes | None = None, queue: bytes | None = None):
        super().__init__(code, message[:MAX_DETAIL])
        self.corr = corr
        self.queue = queue


BODY_FIELDS = {
    "sess": Bin(SESSION_ID_SIZE),
    "corr": Bin(CORR_ID_SIZE),
    "q": Optional(QUEUE_ID),
    "cmd": Str(8),
}


_BODY_SPECS = {c: dict(BODY_FIELDS, **c.FIELDS) for c in COMMANDS.values()}


def encode_body(session: bytes, corr: bytes, queue: bytes | None, command: Command) -> bytes:
    body = {"sess": session, "corr": corr, "q": queue, "cmd": command.NAME}
    body.update(frame_args(command))
    return packb(body)


@dataclass(frozen=True)
class RawTransmission:
    """A transmission whose ``corr`` could be read, nothing else checked yet (relay.md "Transmissions")."""

    signature: bytes
    body: bytes
    fields: dict
    corr: bytes


def read_transmission(item: object) -> RawTransmission:
    """Read one ``[signature, body]`` pair as far as its ``corr``.

    Raises:
        TransmissionError(SYNTAX), without a corr: the corr cannot be read (not a pair of bins, a body
            that is not a msgpack map, no ``corr`` or not 24 bytes).
    """
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
        raise TransmissionError(ErrorCode.SYNTAX, "a transmission must be [signature: bin, body: bin]")
    signature, body = item
    try:
        raw = unpackb(body, ErrorCode.SYNTAX, "transmission body")
    except RemoteProtocolError as exc:
        raise TransmissionError(ErrorCode.SYNTAX, exc.message) from None
    if not isinstance(raw, dict):
        raise TransmissionError(ErrorCode.SYNTAX, "transmission body must be a map")
    corr = raw.get("corr")
    if not (isinstance(corr, bytes) and len(corr) == CORR_ID_SIZE):
        raise TransmissionError(ErrorCode.SYNTAX, f"'corr' missing, or not bin of {CORR_ID_SIZE} bytes")
    return RawTransmission(signature, body, raw, corr)


def check_transmission(raw: RawTransmission) -> Transmission:
    """The rest of the checks of a transmission whose corr was read.

    Raises:
        TransmissionError: SYNTAX, CMD or LARGE, with the corr (and the queue id if it could be read).
    """
    corr = raw.corr
    queue = raw.fields.get("q") if isinstance(raw.fields.get("q"), bytes) and len(raw.fields["q"]) == QUEUE_ID_SIZE else None
    if len(raw.signature) not in (0, SIGNATURE_SIZE):
        raise TransmissionError(ErrorCode.SYNTAX, f"signature must be 0 or {SIGNATURE_SIZE} bytes", corr, queue)
    name = raw.fields.get("cmd")
    command_type = COMMANDS.get(name) if isinstance(name, str) else None
    if command_type is None:
        raise TransmissionError(ErrorCode.CMD, f"unknown command {name!r}", corr, queue)
    body = raw.fields.get("body")
    if command_type is Send and isinstance(body, bytes) and len(body) > MAX_BODY:
        raise TransmissionError(ErrorCode.LARGE, f"body of {len(body)} bytes exceeds {MAX_BODY}", corr, queue)
    spec = _BODY_SPECS[command_type]
    try:
        checked = check_map(raw.fields, spec, f"{name} body")
    except FieldError as exc:
        raise TransmissionError(ErrorCode.SYNTAX, str(exc), corr, queue) from None
    if command_type.NEEDS_QUEUE != (checked["q"] is not None):
        need = "needs a queue id in 'q'" if command_type.NEEDS_QUEUE else "must have nil 'q'"
        raise TransmissionError(ErrorCode.SYNTAX, f"{name} {need}", corr, queue)
    command = command_type(**{k: checked[k] for k in command_type.FIELDS})
    return Transmission(raw.signature, raw.body, checked["sess"], corr, checked["q"], command)


def decode_transmission(item: object) -> Transmission:
    """Decode one ``[signature, body]`` pair from a command block (``read_transmission``, then ``check_transmission``).

    Raises:
        TransmissionError: with SYNTAX, CMD or LARGE, and the corr id if it could be read.
    """
    return check_transmission(read_transmission(item))


RESPONSE_HEAD = {"corr": Optional(Bin(CORR_ID_SIZE, also=(len(UNREAD_CORR),))), "q": Optional(QUEUE_ID), "r": Str(8)}
"""``corr``: the command's; empty (``UNREAD_CORR``) if it could not be read; nil for a push."""


def encode_response(corr: bytes | None, queue: bytes | None, response: Response) -> dict:
    item = {"corr": corr, "q": queue, "r": response.NAME}
    item.update(frame_args(response))
    return item


_RESPONSE_SPECS = {r: dict(RESPONSE_HEAD, **r.FIELDS) for r in RESPONSES.values()}


def decode_response(item: object) -> tuple[bytes | None, bytes | None, Response]:
    """Decode one response map. Raises RemoteProtocolError(SYNTAX)."""
    if not isinstance(item, dict):
        raise RemoteProtocolError(ErrorCode.SYNTAX, "a response must be a map")
    name = item.get("r")
    response_type = RESPONSES.get(name) if isinstance(name, str) else None
    if response_type is None:
        raise RemoteProtocolError(ErrorCode.SYNTAX, f"unknown response {name!r}")
    try:
        checked = check_map(item, _RESPONSE_SPECS[response_type], f"{name} response")
    except FieldError as exc:
        raise RemoteProtocolError(ErrorCode.SYNTAX, str(exc)) from None
    response = response_type(**{k: checked[k] for k in response_type.FIELDS})
    return checked["corr"], checked["q"], response


# --- Hellos (plaintext blocks; spec: "Handshake") ----------------------------------

NODE_HELLO_BODY = {
    "vmin": Int(1, 0xFFFF),
    "vmax": Int(1, 0xFFFF),
    "sess": Bin(SESSION_ID_SIZE),
    "skey": KEY,
    "node": KEY,
}
NODE_HELLO = {"hello": Bin(max_size=512), "sig": Bin(SIGNATURE_SIZE)}
CLIENT_HELLO = {"v": Int(1, 0xFFFF), "ckey": KEY}
ENVELOPE_FIELDS = {"epk": KEY, "box": Bin(max_size=SEALED_CONTENT_SIZE)}
ENVELOPE_CONTENT = {"ts": Int(), "t": Bin(max_size=SEALED_CONTENT_SIZE)}
