"""Exceptions raised by :mod:`client.e2e`.

Every error that input from the network or from storage can trigger is an
:class:`E2EError`, so the agent can catch one class around a decrypt call and
be sure nothing else (``nacl.exceptions.CryptoError``, ``msgpack`` errors,
``struct.error``...) escapes.  Programming errors by the caller (a key of the
wrong length passed as an argument, an ``rng`` that returns the wrong number of
bytes) raise ``ValueError``/``TypeError`` as usual.

The messages are meant for logs and for a developer; they never contain key
material or plaintext.
"""

from __future__ import annotations

__all__ = [
    "E2EError",
    "HandshakeError",
    "DecryptError",
    "ReplayError",
    "SkipLimitError",
    "PaddingError",
    "StateError",
    "ChainError",
]


class E2EError(Exception):
    """Base class of every error raised by the end-to-end encryption layer."""


class HandshakeError(E2EError):
    """An invitation, connection request or accept message is malformed, was
    not made for our keys, or failed authentication (rewritten in transit)."""


class DecryptError(E2EError):
    """A ratchet message cannot be decrypted: malformed, tampered with, not for
    this conversation, or its key is gone.  The state passed in is unchanged."""


class ReplayError(DecryptError):
    """A ratchet message whose key was already used (a replay or a duplicate
    delivery).  A subclass of :class:`DecryptError`."""


class SkipLimitError(DecryptError):
    """A ratchet message claims more skipped messages than ``MAX_SKIP``.  Either
    the peer sent that many messages that were all lost, or someone is trying
    to make us derive and store a huge number of keys."""


class PaddingError(E2EError):
    """A plaintext is too long to pad, or a padded block is malformed."""


class StateError(E2EError):
    """Serialized state is garbage/unsupported, or the state cannot perform the
    requested operation (for example sending before the first message arrived)."""


class ChainError(E2EError):
    """An application message chain header is malformed."""
