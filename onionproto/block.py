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
    return len(content).to_bytes(2, "big") + content + PAD_BYTE * (room - len(content))


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
    padding = padded[2 + length :]
    if padding.count(PAD_BYTE) != len(padding):
        raise RemoteProtocolError(ErrorCode.BLOCK, "padding is not all '#' bytes")
    return padded[2 : 2 + length]


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
