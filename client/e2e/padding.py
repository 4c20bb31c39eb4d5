"""Fixed-size padding of plaintexts before encryption (docs/e2ee.md, "Padding").

Format of a padded block of ``size`` bytes::

    length (u16, big-endian) || data (length bytes) || zero bytes up to size

The encoding is canonical: the filler must be all zeros, so one plaintext has
exactly one padded form.  Unpadding runs only on authenticated plaintext (it is
always called after AEAD decryption), so timing is not a concern here.
"""

from __future__ import annotations

import struct

from .errors import PaddingError
from .sizes import MAX_MESSAGE_PLAINTEXT, MESSAGE_PADDED_SIZE, PAD_OVERHEAD

__all__ = ["pad", "unpad", "max_plaintext", "MESSAGE_PADDED_SIZE", "MAX_MESSAGE_PLAINTEXT"]

_MAX_BLOCK = 0xFFFF + PAD_OVERHEAD


def max_plaintext(size: int) -> int:
    """Largest plaintext that fits a padded block of ``size`` bytes."""
    return size - PAD_OVERHEAD


def pad(data: bytes, size: int = MESSAGE_PADDED_SIZE) -> bytes:
    """Pad ``data`` to exactly ``size`` bytes.

    Raises:
        PaddingError: ``data`` does not fit, or ``size`` is out of range.
    """
    if not PAD_OVERHEAD <= size <= _MAX_BLOCK:
        raise PaddingError(f"padded size must be between {PAD_OVERHEAD} and {_MAX_BLOCK} bytes, got {size}")
    data = bytes(data)
    if len(data) > size - PAD_OVERHEAD:
        raise PaddingError(
            f"plaintext is {len(data)} bytes; at most {size - PAD_OVERHEAD} bytes fit in a "
            f"{size}-byte padded block"
        )
    return struct.pack(">H", len(data)) + data + bytes(size - PAD_OVERHEAD - len(data))


def unpad(block: bytes) -> bytes:
    """Return the data inside a padded block.

    Raises:
        PaddingError: the block is shorter than the length field, the length
            points past the end, or the filler is not all zeros.
    """
    block = bytes(block)
    if len(block) < PAD_OVERHEAD:
        raise PaddingError(f"padded block is {len(block)} bytes, shorter than its {PAD_OVERHEAD}-byte length field")
    (length,) = struct.unpack_from(">H", block)
    end = PAD_OVERHEAD + length
    if end > len(block):
        raise PaddingError(f"padding length field says {length} bytes but the block holds only {len(block) - PAD_OVERHEAD}")
    if block[end:].count(0) != len(block) - end:
        raise PaddingError("padding filler is not all zero bytes (malformed or non-canonical padding)")
    return block[PAD_OVERHEAD:end]
