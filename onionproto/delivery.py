"""Delivery boxes: how the node re-encrypts each message for its recipient.

docs/protocol/relay.md, "Delivery". ``box = nonce ‖ secretbox(queue key,
nonce, msgpack [ts, body])`` with a fresh random nonce, so the bytes a sender
uploads never equal the bytes the recipient downloads.
"""

import os

from . import crypto
from .errors import ErrorCode, RemoteProtocolError
from .frames import packb, unpackb


def seal_message(queue_key: bytes, timestamp: int, body: bytes, rng: crypto.Rng = os.urandom) -> bytes:
    return crypto.secretbox_seal(queue_key, packb([timestamp, body]), rng)


def open_message(queue_key: bytes, box: bytes) -> tuple[int, bytes]:
    """Recipient: return (node's receive time in Unix seconds, body)."""
    content = unpackb(crypto.secretbox_open(queue_key, box, ErrorCode.AUTH, "message box"), ErrorCode.SYNTAX, "message box")
    if not (isinstance(content, list) and len(content) == 2 and isinstance(content[0], int) and isinstance(content[1], bytes)):
        raise RemoteProtocolError(ErrorCode.SYNTAX, "message box must hold [ts: uint, body: bin]")
    return content[0], content[1]
