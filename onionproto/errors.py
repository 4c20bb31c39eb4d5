"""The protocol's error families and the error codes carried on the wire.

Like h11: ``LocalProtocolError`` means *we* were about to break the protocol
(a bug or a misuse of this package); ``RemoteProtocolError`` means the peer
sent something invalid. Each wire error code is listed in
docs/protocol/relay.md, "Error codes".
"""

from enum import Enum


class ErrorCode(str, Enum):
    # Session-fatal: the node answers with ERR and closes the connection.
    BLOCK = "BLOCK"  # wrong block size, bad padding, bad encryption, not msgpack
    VERSION = "VERSION"  # no common protocol version
    HANDSHAKE = "HANDSHAKE"  # malformed hello, bad node signature, bad key
    # Per command: the command is not applied, other commands go on.
    SYNTAX = "SYNTAX"  # a field is missing, unknown or of the wrong type/size
    CMD = "CMD"  # unknown command, or not allowed in this context
    AUTH = "AUTH"  # signature missing, wrong or made with the wrong key
    SESSION = "SESSION"  # signed for another session
    REPLAY = "REPLAY"  # correlation id not greater than the previous one
    NO_QUEUE = "NO_QUEUE"  # no such queue (never existed or deleted)
    QUOTA = "QUOTA"  # queue full: retry later
    LARGE = "LARGE"  # body larger than MAX_BODY
    ACCESS = "ACCESS"  # node needs an access key to create queues
    NO_MSG = "NO_MSG"  # ACK of a message that is not the current one
    LIMIT = "LIMIT"  # unsigned send to an unsecured queue beyond its limit
    SUSPENDED = "SUSPENDED"  # queue suspended by its recipient
    SECURED = "SECURED"  # KEY on a queue already secured with another key
    THROTTLED = "THROTTLED"  # too many commands too fast: retry later
    UNREACHABLE = "UNREACHABLE"  # forwarding: destination node not reachable
    ENVELOPE = "ENVELOPE"  # forwarding: envelope not decryptable, stale or replayed
    INTERNAL = "INTERNAL"  # the node failed; nothing was applied

    @property
    def fatal(self) -> bool:
        return self in FATAL_CODES


FATAL_CODES = frozenset({ErrorCode.BLOCK, ErrorCode.VERSION, ErrorCode.HANDSHAKE})


class ProtocolError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class AddressError(ValueError):
    """A node address that is malformed or not allowed (not .onion, not loopback)."""
