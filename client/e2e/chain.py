"""Application-level message chain (docs/e2ee.md, "Message chain").

Inside the ratchet plaintext each application message starts with its
sequence number and the hash of the previous message in the same direction::

    seq (u64 BE, first message is 1) || prev_hash (32) || body

so the receiver can tell the user that messages were dropped, duplicated,
reordered, or that the history was tampered with (for example by someone who
holds a copy of the sender's state).  The ratchet already rejects replays and
forgeries of single messages; the chain adds the *history* view.

``message_hash = BLAKE2b-256(person="onionpost-chain", seq || prev_hash || body)``.
Everything here is pure; the states are immutable and serialize to bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct
from dataclasses import dataclass

from ._codec import Record, pack_record
from .errors import ChainError, StateError

__all__ = [
    "HASH_SIZE",
    "LINK_SIZE",
    "GENESIS_HASH",
    "MAX_TRACKED_MISSING",
    "Verdict",
    "Classification",
    "ChainLink",
    "message_hash",
    "encode_message",
    "decode_message",
    "classify",
    "SenderChain",
    "ReceiverChain",
]

HASH_SIZE = 32
LINK_SIZE = 8 + HASH_SIZE
#: ``prev_hash`` of the first message.
GENESIS_HASH = bytes(HASH_SIZE)
#: Most missing sequence numbers a receiver remembers (to check late arrivals).
MAX_TRACKED_MISSING = 1000
_MAX_SEQ = 2**64 - 1
_LINK = struct.Struct(">Q32s")
_PERSON = b"onionpost-chain"


class Verdict(enum.Enum):
    OK = "ok"  # the next message, chained to the one we saw last
    GAP = "gap"  # ``missing`` messages before this one never arrived (yet)
    DUPLICATE = "duplicate"  # already received
    REORDERED = "reordered"  # a late message from an earlier gap
    BAD_HASH = "bad_hash"  # injected, tampered with, or a forked history


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    missing: int = 0  # only for GAP: how many messages are missing
    detail: str = ""


@dataclass(frozen=True)
class ChainLink:
    seq: int
    prev_hash: bytes

    def to_bytes(self) -> bytes:
        return _LINK.pack(self.seq, self.prev_hash)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ChainLink":
        if len(data) != LINK_SIZE:
            raise ChainError(f"chain header is {len(data)} bytes; expected {LINK_SIZE}")
        seq, prev_hash = _LINK.unpack(data)
        return cls(seq, prev_hash)


def message_hash(seq: int, prev_hash: bytes, body: bytes) -> bytes:
    """Hash of one chained message (covers its header and body)."""
    h = hashlib.blake2b(digest_size=HASH_SIZE, person=_PERSON)
    h.update(_LINK.pack(seq, prev_hash))
    h.update(body)
    return h.digest()


def encode_message(seq: int, prev_hash: bytes, body: bytes) -> bytes:
    if not 1 <= seq <= _MAX_SEQ:
        raise ValueError("seq must be between 1 and 2^64-1")
    if len(prev_hash) != HASH_SIZE:
        raise ValueError(f"prev_hash must be {HASH_SIZE} bytes")
    return _LINK.pack(seq, bytes(prev_hash)) + bytes(body)


def decode_message(data: bytes) -> tuple[ChainLink, bytes]:
    """Split a chained message into its link and body.

    Raises:
        ChainError: shorter than the chain header, or sequence number 0.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ChainError(f"chained message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < LINK_SIZE:
        raise ChainError(f"chained message is {len(data)} bytes, shorter than the {LINK_SIZE}-byte chain header")
    link = ChainLink.from_bytes(data[:LINK_SIZE])
    if link.seq == 0:
        raise ChainError("chain sequence numbers start at 1; got 0")
    return link, data[LINK_SIZE:]


def classify(last_seq: int, last_hash: bytes, seq: int, prev_hash: bytes, this_hash: bytes) -> Classification:
    """Classify an incoming message against the last one we accepted.

    Args:
        last_seq, last_hash: sequence number and hash of the highest message
            received so far (0 and ``GENESIS_HASH`` before the first).
        seq, prev_hash: the incoming message's chain header.
        this_hash: ``message_hash`` of the incoming message.
    """
    if seq == last_seq + 1:
        if prev_hash == last_hash:
            return Classification(Verdict.OK)
        return Classification(
            Verdict.BAD_HASH, detail=f"message {seq} does not chain to message {last_seq} we received"
        )
    if seq > last_seq + 1:
        missing = seq - last_seq - 1
        return Classification(Verdict.GAP, missing=missing, detail=f"{missing} message(s) before {seq} missing")
    if seq == last_seq:
        if this_hash == last_hash:
            return Classification(Verdict.DUPLICATE, detail=f"message {seq} received twice")
        return Classification(Verdict.BAD_HASH, detail=f"two different messages numbered {seq}")
    return Classification(Verdict.REORDERED, detail=f"message {seq} arrived after message {last_seq}")


@dataclass(frozen=True)
class SenderChain:
    """Sending side: the sequence number and hash of the last message sent."""

    last_seq: int = 0
    last_hash: bytes = GENESIS_HASH

    def next_message(self, body: bytes) -> tuple["SenderChain", bytes]:
        """Return the new state and the chained message to encrypt."""
        seq = self.last_seq + 1
        data = encode_message(seq, self.last_hash, body)
        return SenderChain(seq, message_hash(seq, self.last_hash, body)), data

    def to_bytes(self) -> bytes:
        return pack_record("chain-send", 1, {"seq": self.last_seq, "hash": self.last_hash})

    @classmethod
    def from_bytes(cls, data: bytes) -> "SenderChain":
        r = Record(data, "chain-send", 1, frozenset({"seq", "hash"}))
        return cls(r.int_("seq", 0, _MAX_SEQ), r.bytes_("hash", HASH_SIZE))


@dataclass(frozen=True)
class ReceiverChain:
    """Receiving side.  Besides the last message it remembers up to
    ``MAX_TRACKED_MISSING`` missing sequence numbers, with the hash each must
    have when it is known (from the ``prev_hash`` of its successor), so a late
    message is verified rather than taken on trust."""

    last_seq: int = 0
    last_hash: bytes = GENESIS_HASH
    missing: tuple[tuple[int, bytes | None], ...] = ()

    def receive(self, message: bytes) -> tuple["ReceiverChain", Classification, bytes]:
        """Classify a decrypted chained message; return ``(new_state,
        classification, body)``.  For DUPLICATE and BAD_HASH the state is
        returned unchanged.

        Raises:
            ChainError: the message is too short to hold a chain header.
        """
        link, body = decode_message(message)
        this_hash = message_hash(link.seq, link.prev_hash, body)
        result = classify(self.last_seq, self.last_hash, link.seq, link.prev_hash, this_hash)
        if result.verdict is Verdict.OK:
            return dataclasses.replace(self, last_seq=link.seq, last_hash=this_hash), result, body
        if result.verdict is Verdict.GAP:
            first = max(self.last_seq + 1, link.seq - MAX_TRACKED_MISSING)
            added = [(s, None) for s in range(first, link.seq - 1)] + [(link.seq - 1, link.prev_hash)]
            missing = (self.missing + tuple(added))[-MAX_TRACKED_MISSING:]
            return ReceiverChain(link.seq, this_hash, missing), result, body
        if result.verdict is Verdict.REORDERED:
            return self._late(link, this_hash, body)
        return self, result, body

    def _late(self, link: ChainLink, this_hash: bytes, body: bytes) -> tuple["ReceiverChain", Classification, bytes]:
        for index, (seq, expected) in enumerate(self.missing):
            if seq != link.seq:
                continue
            if expected is not None and expected != this_hash:
                bad = Classification(
                    Verdict.BAD_HASH, detail=f"late message {seq} does not match the hash its successor chained to"
                )
                return self, bad, body
            missing = list(self.missing[:index] + self.missing[index + 1 :])
            # Its own prev_hash tells what the message before it must hash to.
            for j, (other, other_expected) in enumerate(missing):
                if other == seq - 1 and other_expected is None:
                    missing[j] = (other, link.prev_hash)
            ok = Classification(Verdict.REORDERED, detail=f"late message {seq} arrived after {self.last_seq}")
            return dataclasses.replace(self, missing=tuple(missing)), ok, body
        dup = Classification(Verdict.DUPLICATE, detail=f"message {link.seq} already received (or too old to track)")
        return self, dup, body

    def to_bytes(self) -> bytes:
        return pack_record(
            "chain-recv",
            1,
            {"seq": self.last_seq, "hash": self.last_hash, "missing": [[s, h] for s, h in self.missing]},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReceiverChain":
        r = Record(data, "chain-recv", 1, frozenset({"seq", "hash", "missing"}))
        missing = []
        for entry in r.list_("missing", MAX_TRACKED_MISSING):
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not isinstance(entry[0], int)
                or isinstance(entry[0], bool)
                or not 1 <= entry[0] <= _MAX_SEQ
                or not (entry[1] is None or (isinstance(entry[1], bytes) and len(entry[1]) == HASH_SIZE))
            ):
                raise StateError("chain-recv state field 'missing' has a malformed entry")
            missing.append((entry[0], entry[1]))
        return cls(r.int_("seq", 0, _MAX_SEQ), r.bytes_("hash", HASH_SIZE), tuple(missing))
