"""The client's two kinds of queue record, and how they persist.

An inbound queue is one we read (we hold its recipient key); an outbound
queue is one we write to (we hold its sender key). Each has its own keys and
its own link to the relay, so nothing at the socket level ties two queues
together (docs/client.md, "Queues").
"""

import os
from dataclasses import asdict, dataclass

import msgpack

from onionpost.proto import crypto


@dataclass(frozen=True)
class InboundQueue:
    relay: str  # address of our trusted relay holding the queue
    rid: bytes  # recipient id (never leaves this device and that relay)
    snd: bytes  # sender id (given to the contact)
    recipient_secret: bytes  # Ed25519 secret key (64 bytes): signs recipient commands
    queue_key: bytes  # recipient–node secret: opens delivery boxes
    sender_public: bytes | None = None  # set once we secured the queue

    @property
    def tag(self) -> str:
        """Isolation tag: one socket (one Tor circuit) per queue."""
        return "in:" + crypto.kdf(self.rid, b"onionpost/1 isolation").hex()

    def to_bytes(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "InboundQueue":
        return cls(**msgpack.unpackb(data, raw=False))


@dataclass(frozen=True)
class OutboundQueue:
    relay: str  # address of the contact's relay holding the queue
    snd: bytes  # sender id
    sender_secret: bytes  # Ed25519 secret key (64 bytes) we sign SENDs with
    secured: bool = False  # False: SENDs go unsigned (only the connection handshake)

    @property
    def tag(self) -> str:
        return "out:" + crypto.kdf(self.snd, b"onionpost/1 isolation").hex()

    @property
    def sender_public(self) -> bytes:
        return self.sender_secret[32:]

    def to_bytes(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "OutboundQueue":
        return cls(**msgpack.unpackb(data, raw=False))


def new_sender_key(rng=os.urandom) -> tuple[bytes, bytes]:
    """(public, secret) Ed25519 pair for a sender to sign SENDs with."""
    return crypto.signing_keypair(rng)
