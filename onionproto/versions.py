"""Protocol versions and the fixed sizes of relay protocol v1.

See docs/protocol/relay.md, "Versions" and "Blocks". Every wire change adds a
named version constant here and a line to the spec's version history.
"""

PROTOCOL_V1 = 1
"""First release: handshake, encrypted blocks, queues, forwarding."""

MIN_VERSION = PROTOCOL_V1
MAX_VERSION = PROTOCOL_V1

BLOCK_SIZE = 16384
"""Every WebSocket message in both directions is exactly this many bytes."""

MAC_SIZE = 16
"""Poly1305 tag that precedes each encrypted block's ciphertext."""

SEALED_CONTENT_SIZE = BLOCK_SIZE - MAC_SIZE
"""Plaintext size of an encrypted block: 2-byte length + content + padding."""

SESSION_ID_SIZE = 32
CORR_ID_SIZE = 24
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

MAX_ADDRESS_LENGTH = 200
MAX_ACCESS_KEY_LENGTH = 128
