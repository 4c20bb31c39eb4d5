"""Thin wrappers around the primitives (private to :mod:`client.e2e`).

Every function either returns a result or raises one of our own errors; the
exception types of PyNaCl and ``cryptography`` never leak out.  Nothing here
touches the OS except through the ``rng`` callables passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem

from .sizes import (
    AEAD_NONCE_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
    X25519_KEY_SIZE,
)

Rng = Callable[[int], bytes]


def random_bytes(rng: Rng, n: int) -> bytes:
    """Call ``rng(n)`` and insist on exactly ``n`` bytes back."""
    out = rng(n)
    if not isinstance(out, (bytes, bytearray)) or len(out) != n:
        raise ValueError(f"rng({n}) must return exactly {n} bytes")
    return bytes(out)


# --- HKDF (RFC 5869) and HMAC -------------------------------------------------


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int, hash_name: str = "sha512") -> bytes:
    """HKDF-Extract-and-Expand.  An empty ``salt`` means HashLen zero bytes."""
    hash_len = hashlib.new(hash_name).digest_size
    if length > 255 * hash_len:
        raise ValueError("HKDF output too long")
    prk = hmac.digest(salt or bytes(hash_len), ikm, hash_name)
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        okm += block
        counter += 1
    return okm[:length]


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


# --- X25519 ---------------------------------------------------------------------


def x25519_keypair(rng: Rng) -> tuple[bytes, bytes]:
    """Return (private, public).  The private key is 32 random bytes; clamping
    happens inside every scalar multiplication."""
    private = random_bytes(rng, X25519_KEY_SIZE)
    return private, _sodium.crypto_scalarmult_base(private)


def x25519_public(private: bytes) -> bytes:
    return _sodium.crypto_scalarmult_base(private)


class DHError(Exception):
    """Internal: the DH output was all zeros (peer sent a low-order point)."""


def x25519(private: bytes, public: bytes) -> bytes:
    """DH(private, public).  libsodium refuses all-zero outputs (low-order
    peer keys); we turn that into :class:`DHError` for the caller to rewrap."""
    if len(public) != X25519_KEY_SIZE or len(private) != X25519_KEY_SIZE:
        raise DHError("X25519 keys are 32 bytes")
    try:
        return _sodium.crypto_scalarmult(private, public)
    except (_nacl_exc.RuntimeError, _nacl_exc.CryptoError, ValueError, TypeError) as exc:
        raise DHError("X25519 with a low-order public key") from exc


# --- XChaCha20-Poly1305 ---------------------------------------------------------


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """Return the plaintext, or ``None`` if authentication fails."""
    if len(nonce) != AEAD_NONCE_SIZE or len(key) != 32:
        return None
    try:
        return _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        return None


# --- ML-KEM-768 (FIPS 203), via cryptography/OpenSSL ----------------------------


class KEMError(Exception):
    """Internal: malformed ML-KEM key or ciphertext."""


def mlkem_keypair(rng: Rng) -> tuple[bytes, bytes]:
    """Return (seed, encapsulation key).  The 64-byte seed is the private key
    (FIPS 203 allows storing the seed instead of the expanded key)."""
    seed = random_bytes(rng, MLKEM768_SEED_SIZE)
    return seed, mlkem_public_from_seed(seed)


def mlkem_public_from_seed(seed: bytes) -> bytes:
    try:
        private = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    except (ValueError, TypeError) as exc:
        raise KEMError("bad ML-KEM-768 seed") from exc
    return private.public_key().public_bytes_raw()


def mlkem_check_public(public_key: bytes) -> None:
    """Raise :class:`KEMError` unless ``public_key`` passes FIPS 203's checks."""
    if len(public_key) != MLKEM768_PUBLIC_KEY_SIZE:
        raise KEMError("an ML-KEM-768 encapsulation key is 1184 bytes")
    try:
        _mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    except (ValueError, TypeError) as exc:
        raise KEMError("invalid ML-KEM-768 encapsulation key (coefficients out of range)") from exc


def mlkem_encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """Return (ciphertext, shared_secret).  OpenSSL draws the encapsulation
    randomness itself; it cannot be injected (see docs/e2ee.md, "Determinism")."""
    if len(public_key) != MLKEM768_PUBLIC_KEY_SIZE:
        raise KEMError("an ML-KEM-768 encapsulation key is 1184 bytes")
    try:
        key = _mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
        shared_secret, ciphertext = key.encapsulate()
    except (ValueError, TypeError) as exc:
        # FIPS 203 "modulus check" failure: coefficients out of range.
        raise KEMError("invalid ML-KEM-768 encapsulation key") from exc
    return ciphertext, shared_secret


def mlkem_decapsulate(seed: bytes, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Return (shared_secret, encapsulation_key) -- the key comes for free from
    the expanded private key and is needed for the transcript hash.  A
    tampered ciphertext of the right length yields a pseudorandom secret
    (FIPS 203 implicit rejection), not an error."""
    if len(ciphertext) != MLKEM768_CIPHERTEXT_SIZE:
        raise KEMError("an ML-KEM-768 ciphertext is 1088 bytes")
    try:
        private = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        return private.decapsulate(ciphertext), private.public_key().public_bytes_raw()
    except (ValueError, TypeError) as exc:
        raise KEMError("ML-KEM-768 decapsulation failed") from exc
