"""Security code for comparing keys out of band (docs/e2ee.md, "Security code").

Modelled on Signal's numeric safety numbers: each side's connection identity
key is hashed with iterated SHA-512 into 30 digits; the two halves are sorted
and joined, so both people see the same 60 digits (12 groups of 5) whichever
side computes it.  If a man in the middle substituted the invitation, the two
phones hold different ``ik_a`` / ``ik_b`` pairs and the codes differ.

There are no user identifiers in onionpost, so unlike Signal nothing but a
fixed label and the key goes into the hash.
"""

from __future__ import annotations

import hashlib
import hmac

from .sizes import X25519_KEY_SIZE

__all__ = ["SAFETY_CODE_ITERATIONS", "safety_code", "safety_code_for_state", "codes_match", "format_code"]

#: Hash iterations per key, as in Signal's fingerprint (slows down a search for
#: a key whose code collides with a target's).
SAFETY_CODE_ITERATIONS = 5200
_VERSION = b"\x00\x01"
_LABEL = b"onionpost security code"
_DIGITS = 60
_SEPARATORS = str.maketrans("", "", " \t\r\n-._")


def _half(key: bytes) -> str:
    digest = hashlib.sha512(_VERSION + key + _LABEL).digest()
    for _ in range(SAFETY_CODE_ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    # 6 chunks of 5 bytes, each reduced mod 100000 to 5 digits (bias < 2^-23).
    return "".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def safety_code(key_1: bytes, key_2: bytes) -> str:
    """The 60-digit code for two connection identity public keys, as 12
    space-separated groups of 5 digits.  ``safety_code(a, b) == safety_code(b, a)``.

    Raises:
        ValueError: a key is not 32 bytes.
    """
    for key in (key_1, key_2):
        if not isinstance(key, (bytes, bytearray)) or len(key) != X25519_KEY_SIZE:
            raise ValueError("identity keys must be 32-byte X25519 public keys")
    digits = "".join(sorted((_half(bytes(key_1)), _half(bytes(key_2)))))
    return format_code(digits)


def safety_code_for_state(state) -> str:
    """The code for a :class:`~client.e2e.ratchet.RatchetState`'s connection."""
    return safety_code(state.local_identity_key, state.remote_identity_key)


def format_code(digits: str, groups_per_line: int | None = None) -> str:
    """Group 60 digits by 5, separated by spaces, optionally broken into lines
    of ``groups_per_line`` groups (4 gives Signal's 3 lines of 4)."""
    groups = [digits[i : i + 5] for i in range(0, len(digits), 5)]
    if not groups_per_line:
        return " ".join(groups)
    return "\n".join(" ".join(groups[i : i + groups_per_line]) for i in range(0, len(groups), groups_per_line))


def _normalize(code: str) -> str | None:
    if not isinstance(code, str):
        return None
    digits = code.translate(_SEPARATORS)
    if len(digits) != _DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def codes_match(expected: str, typed: str) -> bool:
    """Compare a code with one the user typed or read aloud, ignoring spaces,
    line breaks, dashes and dots.  Anything that is not exactly 60 digits
    after that never matches."""
    a, b = _normalize(expected), _normalize(typed)
    if a is None or b is None:
        return False
    return hmac.compare_digest(a, b)
