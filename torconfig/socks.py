"""Per-queue SOCKS credentials for circuit isolation.

The SOCKS ports onionpost opens use ``IsolateSOCKSAuth``: tor never lets two
streams with different SOCKS username/password pairs share a circuit, and
reuses one circuit for streams with the same pair. Deriving the pair from a
queue tag therefore gives every queue its own circuit.
"""

import base64
import hashlib

_PERSON = b"onionpost-socks"


def isolation_credentials(tag: bytes | str) -> tuple[str, str]:
    """Return a stable (username, password) pair for an isolation tag.

    Every distinct tag gives a distinct pair, so its own circuit; the same tag
    always gives the same pair, so streams of one queue share a circuit.

    Args:
        tag: any identifier of the queue (str is UTF-8 encoded).

    Returns:
        Two URL-safe base64 strings of 22 characters (fit SOCKS5's 255 bytes).
    """
    if isinstance(tag, str):
        tag = tag.encode()
    digest = hashlib.blake2b(tag, digest_size=32, person=_PERSON).digest()

    def encode(part: bytes) -> str:
        return base64.urlsafe_b64encode(part).decode().rstrip("=")

    return encode(digest[:16]), encode(digest[16:])
