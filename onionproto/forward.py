"""Forwarding envelopes: a SEND sealed for a destination node.

docs/protocol/relay.md, "Forwarding". The client seals to the X25519 form of
the destination's identity key, taken from the destination's address (which
the client got out of band, in the invitation), so the forwarding node can
neither read the envelope nor substitute another destination key.
"""

import os
from dataclasses import dataclass

from . import crypto
from .block import pad, unpad
from .errors import ErrorCode, RemoteProtocolError
from .fields import FieldError, check_map
from .frames import (
    ENVELOPE_CONTENT,
    ENVELOPE_FIELDS,
    Response,
    Send,
    Transmission,
    decode_response,
    decode_transmission,
    encode_body,
    encode_response,
    packb,
    unpackb,
)
from .versions import CORR_ID_SIZE, ENVELOPE_CONTENT_SIZE

RESPONSE_CONTENT_SIZE = 256
"""Forwarded responses (OK or ERR) are padded to this size."""

MAX_ENVELOPE_AGE = 900
"""Seconds an envelope stays acceptable (its ``ts`` against the destination's clock)."""


@dataclass(frozen=True)
class OpenedEnvelope:
    ephemeral_key: bytes
    timestamp: int
    transmission: Transmission
    response_key: bytes


def seal_send(
    node_key: bytes,
    sender_id: bytes,
    send: Send,
    sender_secret: bytes | None,
    now: int,
    rng: crypto.Rng = os.urandom,
) -> tuple[bytes, bytes]:
    """Seal a SEND for the node whose identity key is ``node_key``.

    Returns:
        (envelope bytes for FWD's ``env``, key to open the forwarded response).
    """
    epk, esk = crypto.dh_keypair(rng)
    request_key, response_key = crypto.envelope_keys(crypto.dh(esk, crypto.identity_dh_public(node_key)), epk)
    # The inner transmission is signed for "session" = the envelope's ephemeral key.
    body = encode_body(epk, rng(CORR_ID_SIZE), sender_id, send)
    signature = crypto.sign(sender_secret, crypto.COMMAND_DOMAIN, body) if sender_secret else b""
    content = pad(packb({"ts": now, "t": packb([signature, body])}), ENVELOPE_CONTENT_SIZE)
    envelope = packb({"epk": epk, "box": crypto.secretbox_seal(request_key, content, rng)})
    return envelope, response_key


class SealedRefusal(RemoteProtocolError):
    """The envelope opened, so its answer can be sealed, but it is refused: the destination answers
    ``ERR code`` inside RRES, sealed with ``response_key`` (relay.md "Forwarding": plain or sealed)."""

    def __init__(self, code: ErrorCode, message: str, response_key: bytes):
        super().__init__(code, message)
        self.response_key = response_key


def open_envelope(identity_secret: bytes, envelope: bytes, now: int) -> OpenedEnvelope:
    """Destination node: open an envelope and decode the SEND inside.

    Raises:
        RemoteProtocolError(ENVELOPE): the envelope cannot be opened (malformed, unusable key, its box
            fails authentication): answered with a plain ERR.
        SealedRefusal: it opened, but its content is malformed (ENVELOPE), stale (ENVELOPE), or not a
            SEND for this envelope (SYNTAX, CMD, LARGE, SESSION): answered inside RRES.
    """
    try:
        outer = check_map(unpackb(envelope, ErrorCode.ENVELOPE, "envelope"), ENVELOPE_FIELDS, "envelope")
    except FieldError as exc:
        raise RemoteProtocolError(ErrorCode.ENVELOPE, str(exc)) from None
    try:
        shared = crypto.dh(crypto.identity_dh_secret(identity_secret), outer["epk"])
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(ErrorCode.ENVELOPE, exc.message) from None
    request_key, response_key = crypto.envelope_keys(shared, outer["epk"])
    padded = crypto.secretbox_open(request_key, outer["box"], ErrorCode.ENVELOPE, "envelope")
    try:
        content = unpad(padded, ENVELOPE_CONTENT_SIZE)
        inner = check_map(unpackb(content, ErrorCode.ENVELOPE, "envelope content"), ENVELOPE_CONTENT, "envelope content")
    except (FieldError, RemoteProtocolError) as exc:
        raise SealedRefusal(ErrorCode.ENVELOPE, str(exc), response_key) from None
    if abs(now - inner["ts"]) > MAX_ENVELOPE_AGE:
        raise SealedRefusal(
            ErrorCode.ENVELOPE, "envelope is stale (or the sender's clock is off by more than 15 minutes)", response_key
        )
    try:
        transmission = decode_transmission(unpackb(inner["t"], ErrorCode.SYNTAX, "forwarded transmission"))
    except RemoteProtocolError as exc:
        raise SealedRefusal(exc.code, exc.message, response_key) from None
    if transmission.session != outer["epk"]:
        raise SealedRefusal(ErrorCode.SESSION, "forwarded command not signed for this envelope", response_key)
    if not isinstance(transmission.command, Send):
        raise SealedRefusal(ErrorCode.CMD, "only SEND can be forwarded", response_key)
    return OpenedEnvelope(outer["epk"], inner["ts"], transmission, response_key)


def seal_response(response_key: bytes, response: Response, rng: crypto.Rng = os.urandom) -> bytes:
    content = pad(packb(encode_response(None, None, response)), RESPONSE_CONTENT_SIZE)
    return crypto.secretbox_seal(response_key, content, rng)


def open_response(response_key: bytes, sealed: bytes) -> Response:
    """Client: open the destination's answer carried back in FRES."""
    padded = crypto.secretbox_open(response_key, sealed, ErrorCode.ENVELOPE, "forwarded response")
    _, _, response = decode_response(unpackb(unpad(padded, RESPONSE_CONTENT_SIZE), ErrorCode.ENVELOPE, "forwarded response"))
    return response
