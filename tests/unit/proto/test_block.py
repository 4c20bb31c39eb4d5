import pytest

from onionpost.proto.block import BlockBuffer, pad, unpad
from onionpost.proto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError


def test_pad_unpad_round_trip():
    for content in (b"", b"x", b"#" * 10, bytes(range(256))):
        block = pad(content, 300)
        assert len(block) == 300
        assert unpad(block, 300) == content


def test_pad_uses_length_prefix_and_hash_padding():
    assert pad(b"ab", 8) == b"\x00\x02ab####"


def test_content_too_large_is_a_local_error():
    with pytest.raises(LocalProtocolError) as exc:
        pad(b"x" * 299, 300)
    assert exc.value.code is ErrorCode.LARGE


@pytest.mark.parametrize(
    "block, reason",
    [
        (b"\x00\x02ab###", "expected 8 bytes"),
        (b"\x00\x09ab####", "length prefix 9"),
        (b"\x00\x02ab##\x00#", "padding"),
    ],
)
def test_unpad_rejects_bad_blocks(block, reason):
    with pytest.raises(RemoteProtocolError) as exc:
        unpad(block, 8)
    assert exc.value.code is ErrorCode.BLOCK
    assert reason in str(exc.value)


def test_block_buffer_reassembles_any_chunking():
    buffer = BlockBuffer(4)
    for byte in b"abcdefghij":
        buffer.feed(bytes([byte]))
    assert buffer.next_block() == b"abcd"
    assert buffer.next_block() == b"efgh"
    assert buffer.next_block() is None
    assert buffer.pending == 2
