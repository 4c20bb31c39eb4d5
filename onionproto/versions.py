"""Protocol versions and the fixed sizes of relay protocol v1.

See docs/protocol/relay.md, "Versions" and "Blocks". Every wire change adds a
named version constant here and a line to the spec's version history.
"""

PROTOCOL_V1 = 1
"""Version 1.0, the first release: handshake, encrypted blocks, queues, forwarding."""

PROTOCOL_V1_1 = 2
"""Version 1.1 (wire value 2): every command gets one answer carrying its corr (an empty corr when
it cannot be read); a readable corr is used up whatever the answer; SEND takes an idempotency token;
forwarded errors are sealed once the envelope is open; exact errors for unusable keys and signed
unsigned commands. relay.md "Versions" lists every rule."""

PROTOCOL_V1_2 = 3
"""Version 1.2 (wire value 3): GET and ACK on a queue this session is subscribed to may be unsigned;
the session authenticates them (relay.md "Signatures", "Threat model")."""

MIN_VERSION = PROTOCOL_V1_1
MAX_VERSION = PROTOCOL_V1_2

VERSION_NAMES = {PROTOCOL_V1: "1.0", PROTOCOL_V1_1: "1.1", PROTOCOL_V1_2: "1.2"}


def version_name(version: int) -> str:
    """How the spec names a wire version: "1.1" for 2; unknown ones as "wire value N"."""
    return VERSION_NAMES.get(version, f"wire value {version}")


def version_range(low: int, high: int) -> str:
    return version_name(low) if low == high else f"{version_name(low)} to {version_name(high)}"

BLOCK_SIZE = 16384
"""Every WebSocket message in both directions is exactly this many bytes."""

MAC_SIZE = 16
"""Poly1305 tag that precedes each encrypted block's ciphertext."""

SEALED_CONTENT_SIZE = BLOCK_SIZE - MAC_SIZE
"""Plaintext size of an encrypted block: 2-byte length + content + padding."""

SESSION_ID_SIZE = 32
CORR_ID_SIZE = 24
UNREAD_CORR = b""
"""The corr of the answer to a command whose corr could not be read (1.1): answers come in command
order, so it answers the oldest command still unanswered."""
MAX_CORR = b"\xff" * CORR_ID_SIZE
"""The greatest corr: a session that has used it can send nothing more (every later command is REPLAY)."""
QUEUE_ID_SIZE = 24
KEY_SIZE = 32
SIGNATURE_SIZE = 64
NONCE_SIZE = 24

MAX_BODY = 15360
"""Largest SEND body (bytes). Leaves room for a forwarded envelope in one block."""

MAX_BATCH = 32
"""Most transmissions (commands or responses) carried in one block."""

ENVELOPE_CONTENT_SIZE = MAX_BODY + 512
"""A forwarding envelope's plaintext is padded to this size (2-byte length first)."""

TOKEN_SIZE = 16
"""SEND's idempotency token (1.1): the same in every retry of one message."""

MAX_ADDRESS_LENGTH = 200
MAX_ACCESS_KEY_LENGTH = 128
