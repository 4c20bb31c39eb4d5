"""The relay protocol's cryptography, on PyNaCl (libsodium).

Each function cites its section of docs/protocol/relay.md. Randomness is a
parameter (``rng(n) -> bytes``) so tests are deterministic.
"""

import os
from collections.abc import Callable

from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.hash import blake2b
from nacl.encoding import RawEncoder

from .block import pad, unpad
from .errors import ErrorCode, RemoteProtocolError
from .versions import KEY_SIZE, MAC_SIZE, NONCE_SIZE, SEALED_CONTENT_SIZE, SIGNATURE_SIZE, TOKEN_SIZE

Rng = Callable[[int], bytes]

HELLO_DOMAIN = b"onionpost/1 hello\x00"
COMMAND_DOMAIN = b"onionpost/1 command\x00"


def kdf(key: bytes, label: bytes, context: bytes = b"") -> bytes:
    """32-byte key = BLAKE2b-256(key=key, data=label ‖ context). Spec: "Key derivation"."""
    return blake2b(label + context, digest_size=32, key=key, encoder=RawEncoder)


# --- Signatures (spec: "Signatures") ---------------------------------------


def signing_keypair(rng: Rng = os.urandom) -> tuple[bytes, bytes]:
    """Return (public key 32 bytes, secret key 64 bytes) from a 32-byte seed."""
    return sodium.crypto_sign_seed_keypair(rng(32))


def sign(secret_key: bytes, domain: bytes, data: bytes) -> bytes:
    return sodium.crypto_sign(domain + data, secret_key)[:SIGNATURE_SIZE]


def usable_signing_key(public_key: bytes) -> bool:
    """True for an Ed25519 public key someone can sign for: a valid point, not of small order
    (the all-zero key is of small order). Spec: "NEW", "KEY"."""
    return len(public_key) == KEY_SIZE and sodium.crypto_core_ed25519_is_valid_point(public_key)


def verify(public_key: bytes, domain: bytes, data: bytes, signature: bytes) -> bool:
    if len(public_key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        sodium.crypto_sign_open(signature + domain + data, public_key)
    except (BadSignatureError, CryptoError, ValueError):
        return False
    return True


# --- X25519 ------------------------------------------------------------------


def dh_keypair(rng: Rng = os.urandom) -> tuple[bytes, bytes]:
    """Return (public, secret) X25519 keys."""
    secret = rng(32)
    return sodium.crypto_scalarmult_base(secret), secret


def dh(secret: bytes, public: bytes) -> bytes:
    """Raw X25519; raises RemoteProtocolError(HANDSHAKE) for a low-order public key."""
    if len(public) != KEY_SIZE:
        raise RemoteProtocolError(ErrorCode.HANDSHAKE, "X25519 key must be 32 bytes")
    try:
        shared = sodium.crypto_scalarmult(secret, public)
    except (CryptoError, RuntimeError):
        raise RemoteProtocolError(ErrorCode.HANDSHAKE, "X25519 key of low order") from None
    if shared == bytes(32):
        raise RemoteProtocolError(ErrorCode.HANDSHAKE, "X25519 key of low order")
    return shared


def identity_dh_public(identity_public: bytes) -> bytes:
    """The X25519 form of a node's Ed25519 identity key (spec: "Forwarding")."""
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(identity_public)
    except (CryptoError, RuntimeError, ValueError):
        raise RemoteProtocolError(ErrorCode.ENVELOPE, "node key is not a valid Ed25519 key") from None


def identity_dh_secret(identity_secret: bytes) -> bytes:
    return sodium.crypto_sign_ed25519_sk_to_curve25519(identity_secret)


# --- Transport encryption (spec: "Handshake", steps 3-4) -----------------------


def transport_keys(shared: bytes, session_id: bytes) -> tuple[bytes, bytes]:
    """Return (client-to-node key, node-to-client key)."""
    return kdf(shared, b"onionpost/1 c2s", session_id), kdf(shared, b"onionpost/1 s2c", session_id)


class BlockCipher:
    """Seals/opens one direction of a session: XSalsa20-Poly1305, counter nonces.

    The n-th block of a direction (n from 0) uses nonce = n as 24 bytes
    big-endian, so blocks cannot be replayed, dropped or reordered unnoticed.
    """

    def __init__(self, key: bytes):
        self._key = key
        self._counter = 0

    def _nonce(self) -> bytes:
        nonce = self._counter.to_bytes(NONCE_SIZE, "big")
        self._counter += 1
        return nonce

    def seal(self, content: bytes) -> bytes:
        return sodium.crypto_secretbox(pad(content, SEALED_CONTENT_SIZE), self._nonce(), self._key)

    def open(self, block: bytes) -> bytes:
        try:
            padded = sodium.crypto_secretbox_open(block, self._nonce(), self._key)
        except (CryptoError, ValueError):
            raise RemoteProtocolError(
                ErrorCode.BLOCK, "block failed authentication (wrong key, replayed or reordered)"
            ) from None
        return unpad(padded, SEALED_CONTENT_SIZE)


# --- SEND idempotency tokens (spec: "SEND") ---------------------------------------


def send_token(body: bytes, key: bytes) -> bytes:
    """The reference client's token for a SEND: the same for every retry of ``body``, and useless to
    anyone without ``key`` (the sender's secret key, or the sender id while the queue is unsecured)."""
    return kdf(kdf(key[:32], b"onionpost/1 send-token key"), b"onionpost/1 send-token", body)[:TOKEN_SIZE]


def token_key(rid: bytes, token: bytes) -> bytes:
    """What a node stores of a SEND's token: a hash of the queue and the token, which names neither."""
    return blake2b(b"onionpost/1 sent\x00" + rid + token, digest_size=TOKEN_SIZE, encoder=RawEncoder)


# --- Delivery re-encryption (spec: "Delivery") ---------------------------------


def queue_secret(dh_secret: bytes, dh_public: bytes) -> bytes:
    """The recipient–node key: KDF of X25519(recipient key, node queue key)."""
    return kdf(dh(dh_secret, dh_public), b"onionpost/1 queue")


# --- Forwarding envelopes (spec: "Forwarding") ---------------------------------


def envelope_keys(shared: bytes, ephemeral_public: bytes) -> tuple[bytes, bytes]:
    """Return (request key, response key) for one envelope."""
    return (
        kdf(shared, b"onionpost/1 fwd-req", ephemeral_public),
        kdf(shared, b"onionpost/1 fwd-res", ephemeral_public),
    )


def secretbox_seal(key: bytes, content: bytes, rng: Rng = os.urandom) -> bytes:
    nonce = rng(NONCE_SIZE)
    return nonce + sodium.crypto_secretbox(content, nonce, key)


def secretbox_open(key: bytes, box: bytes, code: ErrorCode, what: str) -> bytes:
    if len(box) < NONCE_SIZE + MAC_SIZE:
        raise RemoteProtocolError(code, f"{what} too short")
    try:
        return sodium.crypto_secretbox_open(box[NONCE_SIZE:], box[:NONCE_SIZE], key)
    except (CryptoError, ValueError):
        raise RemoteProtocolError(code, f"{what} failed authentication") from None
