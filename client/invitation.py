"""Invitation links: what one user shows another (as text or QR) to start a conversation.

An invitation names the relay and queue the invitee sends to and the inviter's
two X25519 public keys. It travels out of band, so it must survive typing,
copying and QR scanning, and any damage must be reported precisely.

Link format (version 1)::

    onionpost:1/<base32 of payload, RFC 4648 alphabet, upper case, no padding>

    payload  = relay_form || queue_id (24) || ik (32) || ek (32) || checksum (4)
    relay_form = 0x00 || length (1) || relay ASCII          -- any relay string
               | 0x01 || key (32) || onion (35) || port (2) -- exactly
                 "onionpost://<base64url key>@<base32 onion>.onion:<port>"
    checksum = BLAKE2b-32(person="onionpost-invite", data="1/" || payload without checksum)

Why: upper-case base32 lets QR codes use alphanumeric mode (5.5 bits a
character against 8 for base64url in byte mode), and the compact relay form
shrinks a 121-character onion relay address to 70 bytes. With both, an
invitation for an onion relay is 272 characters and fits QR version 10 at
error-correction level M; base64url, or the relay kept as text, needs version
11 to 13. The relay string stays opaque: the compact form is used only when
decoding it gives back the identical string. The relay form comes first so a
truncated link is recognised by its length before the checksum is checked.
Parsing ignores case and surrounding whitespace.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

LINK_PREFIX = "onionpost:"
INVITATION_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAX_RELAY_LENGTH = 200
QUEUE_ID_SIZE = 24
KEY_SIZE = 32
CHECKSUM_SIZE = 4

_RAW_RELAY = 0x00
_ONION_RELAY = 0x01
_ONION_SIZE = 35  # v3 onion address: public key, checksum, version
_ONION_RELAY_SIZE = 1 + KEY_SIZE + _ONION_SIZE + 2
_FIXED_SIZE = QUEUE_ID_SIZE + 2 * KEY_SIZE + CHECKSUM_SIZE
_BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_CHARS = frozenset(_BASE32_ALPHABET + _BASE32_ALPHABET.lower())
_ONION_RELAY_RE = re.compile(r"onionpost://([A-Za-z0-9_-]{43})@([a-z2-7]{56})\.onion:([0-9]{1,5})")


class InvitationError(ValueError):
    """The text is not a valid invitation link; the message says what is wrong."""


@dataclass(frozen=True)
class Invitation:
    version: int
    relay: str
    queue_id: bytes
    ik: bytes
    ek: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise InvitationError(f"version must be a positive int, got {self.version!r}")
        if not isinstance(self.relay, str):
            raise InvitationError(f"relay must be a str, got {type(self.relay).__name__}")
        if not 1 <= len(self.relay) <= MAX_RELAY_LENGTH:
            raise InvitationError(
                f"relay address must be 1 to {MAX_RELAY_LENGTH} characters, got {len(self.relay)}"
            )
        # Visible ASCII only: a relay from a hostile link is printed on the user's terminal.
        if not all("!" <= ch <= "~" for ch in self.relay):
            raise InvitationError("relay address must be visible ASCII (no spaces or control characters)")
        for name, size in (("queue_id", QUEUE_ID_SIZE), ("ik", KEY_SIZE), ("ek", KEY_SIZE)):
            value = getattr(self, name)
            if not isinstance(value, bytes):
                raise InvitationError(f"{name} must be bytes, got {type(value).__name__}")
            if len(value) != size:
                raise InvitationError(f"{name} must be {size} bytes, got {len(value)}")


def format_invitation(invitation: Invitation) -> str:
    """The link for ``invitation``, e.g. ``onionpost:1/AB3...``."""
    if invitation.version not in SUPPORTED_VERSIONS:
        raise InvitationError(f"cannot write invitation version {invitation.version}")
    body = _encode_relay(invitation.relay) + invitation.queue_id + invitation.ik + invitation.ek
    payload = body + _checksum(invitation.version, body)
    return f"{LINK_PREFIX}{invitation.version}/{_base32_encode(payload)}"


def parse_invitation(text: str) -> Invitation:
    """Parse a link made by ``format_invitation``.

    Raises:
        InvitationError: with a message saying precisely what is wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"an invitation link is text, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise InvitationError("the invitation link is empty")
    head = text[: len(LINK_PREFIX)]
    if not (head.isascii() and head.lower() == LINK_PREFIX):
        raise InvitationError(f"not an onionpost invitation: it must start with {LINK_PREFIX!r}")
    rest = text[len(LINK_PREFIX) :]
    if rest.startswith("//"):
        raise InvitationError("this is a relay address (onionpost://...), not an invitation link (onionpost:1/...)")
    version_text, slash, encoded = rest.partition("/")
    if not slash:
        raise InvitationError(f"the invitation has no '/' after the version (expected {LINK_PREFIX}1/...)")
    if not re.fullmatch(r"[1-9][0-9]{0,5}", version_text):
        raise InvitationError(f"the invitation version {version_text[:20]!r} is not a valid version number")
    version = int(version_text)
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise InvitationError(
            f"unsupported invitation version {version} (this onionpost reads version {supported}); "
            "the inviter may have a newer onionpost"
        )
    payload = _base32_decode(encoded, offset=len(LINK_PREFIX) + len(version_text) + 1)
    body, checksum = payload[:-CHECKSUM_SIZE], payload[-CHECKSUM_SIZE:]
    if checksum != _checksum(version, body):
        raise InvitationError("the invitation link is damaged (checksum mismatch): it was mistyped or altered")
    relay, offset = _decode_relay(body)
    queue_id = body[offset : offset + QUEUE_ID_SIZE]
    ik = body[offset + QUEUE_ID_SIZE : offset + QUEUE_ID_SIZE + KEY_SIZE]
    ek = body[offset + QUEUE_ID_SIZE + KEY_SIZE :]
    return Invitation(version=version, relay=relay, queue_id=queue_id, ik=ik, ek=ek)


def _checksum(version: int, body: bytes) -> bytes:
    data = f"{version}/".encode() + body
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE, person=b"onionpost-invite").digest()


def _encode_relay(relay: str) -> bytes:
    match = _ONION_RELAY_RE.fullmatch(relay)
    if match:
        key_text, onion_text, port_text = match.groups()
        key = base64.urlsafe_b64decode(key_text + "=")
        onion = base64.b32decode(onion_text.upper())
        port = int(port_text)
        if port <= 0xFFFF:
            packed = bytes([_ONION_RELAY]) + key + onion + port.to_bytes(2, "big")
            # Only when it gives back the same string (canonical key bits, no leading zeros in the port).
            if _unpack_onion_relay(packed) == relay:
                return packed
    return bytes([_RAW_RELAY, len(relay)]) + relay.encode("ascii")


def _unpack_onion_relay(packed: bytes) -> str:
    key = base64.urlsafe_b64encode(packed[1 : 1 + KEY_SIZE]).decode().rstrip("=")
    onion = base64.b32encode(packed[1 + KEY_SIZE : 1 + KEY_SIZE + _ONION_SIZE]).decode().lower()
    port = int.from_bytes(packed[-2:], "big")
    return f"onionpost://{key}@{onion}.onion:{port}"


def _decode_relay(body: bytes) -> tuple[str, int]:
    """The relay string and the offset where the fixed fields start."""
    form = body[0]
    if form == _ONION_RELAY:
        return _unpack_onion_relay(body[:_ONION_RELAY_SIZE]), _ONION_RELAY_SIZE
    length = body[1]
    try:
        relay = body[2 : 2 + length].decode("ascii")
    except UnicodeDecodeError:
        raise InvitationError("the relay address in the invitation is not ASCII") from None
    return relay, 2 + length


def _payload_size(head: bytes) -> int | None:
    """Expected payload size from its first bytes, or None if they are not there yet."""
    if not head:
        return None
    if head[0] == _ONION_RELAY:
        return _ONION_RELAY_SIZE + _FIXED_SIZE
    if head[0] == _RAW_RELAY:
        return None if len(head) < 2 else 2 + head[1] + _FIXED_SIZE
    raise InvitationError("the invitation link is damaged (unknown relay encoding): it was mistyped or altered")


def _base32_encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def _base32_decode(encoded: str, offset: int) -> bytes:
    """Decode case-insensitive unpadded base32, checking its length against the payload layout.

    ``offset`` is where ``encoded`` starts in the link, for error positions.
    """
    for index, ch in enumerate(encoded):
        if ch not in _BASE32_CHARS:
            raise InvitationError(
                f"invalid character {ch!r} at position {offset + index + 1} of the invitation link "
                "(expected A-Z or 2-7)"
            )
    encoded = encoded.upper()
    expected = _payload_size(_decode_head(encoded))
    expected_chars = None if expected is None else -(-expected * 8 // 5)
    if expected_chars is None or len(encoded) < expected_chars:
        wanted = "" if expected_chars is None else f" of {expected_chars}"
        raise InvitationError(f"the invitation link is truncated ({len(encoded)}{wanted} characters after '/')")
    if len(encoded) > expected_chars:
        raise InvitationError(
            f"the invitation link is too long: {len(encoded) - expected_chars} extra character(s) "
            f"({len(encoded)} after '/', expected {expected_chars})"
        )
    payload = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    # b32decode ignores the unused low bits of the last character; a canonical link has them zero.
    if _base32_encode(payload) != encoded:
        raise InvitationError(
            "the invitation link is damaged (its last character is impossible): it was mistyped or altered"
        )
    return payload


def _decode_head(encoded: str) -> bytes:
    """The whole bytes in the first four characters (at most two)."""
    chunk = encoded[:4]
    value = 0
    for ch in chunk:
        value = value << 5 | _BASE32_ALPHABET.index(ch)
    size = len(chunk) * 5 // 8
    return (value >> (len(chunk) * 5 - size * 8)).to_bytes(size, "big")
