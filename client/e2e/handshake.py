"""Connection handshake: invitation -> request -> accept (docs/e2ee.md, "Handshake").

A PQXDH-like hybrid key agreement adapted to out-of-band invitations:

1. The inviter makes two per-invitation X25519 key pairs, ``ik_a`` (connection
   identity) and ``ek_a`` (ephemeral), and shows the public halves in a QR code
   (:func:`create_invitation`).
2. The joiner makes ``ik_b``, ``ek_b`` and an ML-KEM-768 key pair and sends a
   connection request encrypted to the invitation keys (:func:`create_request`).
3. The inviter decrypts the request (:func:`open_request`); the agent may ask
   the user before going on.
4. The inviter encapsulates to the joiner's ML-KEM key, derives the root key
   from three DHs plus the KEM secret, starts the ratchet as its first sender
   and sends the accept message (:func:`accept_request`).
5. The joiner decapsulates, derives the same root key and decrypts the first
   ratchet message (:func:`complete_join`).

Every function is pure: randomness comes from ``rng``; nothing does I/O.  The
small dataclasses serialize to bytes so the agent can persist them between
steps, across restarts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

from . import _crypto
from ._codec import Record, pack_record
from .errors import E2EError, HandshakeError
from .padding import pad, unpad
from .ratchet import RatchetState, init_receiver, init_sender, ratchet_decrypt, ratchet_encrypt
from .sizes import (
    ACCEPT_PADDED_SIZE,
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    E2E_VERSION,
    INVITATION_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
    PAD_OVERHEAD,
    RATCHET_OVERHEAD,
    REQUEST_PADDED_SIZE,
    X25519_KEY_SIZE,
)

__all__ = [
    "Invitation",
    "InviterSecrets",
    "JoinerPending",
    "ConnectionRequest",
    "create_invitation",
    "create_request",
    "open_request",
    "accept_request",
    "complete_join",
    "ROOT_KDF_INFO",
]

Rng = Callable[[int], bytes]
KemEncapsulate = Callable[[bytes], "tuple[bytes, bytes]"]

_VERSION = bytes([E2E_VERSION])
_K = X25519_KEY_SIZE
#: HKDF info of the root key (the string fixed by the design; the transcript
#: hash is appended to it, see docs/e2ee.md step 4).
ROOT_KDF_INFO = b"onionpost x25519+mlkem768 v1"
_REQUEST_KDF_INFO = b"onionpost request v1"
#: 32 0xFF bytes in front of the DH outputs, as in X3DH/PQXDH for X25519: the
#: KDF input never starts with a valid-looking curve point.
_F = b"\xff" * 32
_REQUEST_MIN = 1 + _K + AEAD_TAG_SIZE + _K + MLKEM768_PUBLIC_KEY_SIZE + PAD_OVERHEAD
_ACCEPT_MIN = 1 + MLKEM768_CIPHERTEXT_SIZE + RATCHET_OVERHEAD


def _key(name: str, value: object, size: int = _K) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
    return bytes(value)


def _dh(private: bytes, public: bytes, what: str) -> bytes:
    try:
        return _crypto.x25519(private, public)
    except _crypto.DHError:
        raise HandshakeError(f"{what} is not a usable X25519 public key (low-order point)") from None


# --- Persisted objects -------------------------------------------------------------


@dataclass(frozen=True)
class Invitation:
    """What the QR code carries (besides the agent's queue address): the
    inviter's two per-invitation X25519 public keys.  65 bytes serialized."""

    identity_key: bytes  # ik_a
    ephemeral_key: bytes  # ek_a

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)
        _key("ephemeral_key", self.ephemeral_key)

    def to_bytes(self) -> bytes:
        return _VERSION + self.identity_key + self.ephemeral_key

    @classmethod
    def from_bytes(cls, data: bytes) -> "Invitation":
        """Raises :class:`HandshakeError` unless ``data`` is a v1 invitation."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise HandshakeError(f"invitation must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) != INVITATION_SIZE:
            raise HandshakeError(f"invitation is {len(data)} bytes; expected {INVITATION_SIZE}")
        if data[0] != E2E_VERSION:
            raise HandshakeError(f"unsupported invitation version {data[0]}")
        if data[1 : 1 + _K] == data[1 + _K :]:
            raise HandshakeError("invitation's identity and ephemeral keys are identical")
        return cls(data[1 : 1 + _K], data[1 + _K :])


@dataclass(frozen=True, repr=False)
class InviterSecrets:
    """The inviter's private keys for one invitation.  Delete them once the
    invitation is used: they decrypt requests and feed the root key."""

    identity_private: bytes  # ik_a
    ephemeral_private: bytes  # ek_a

    def __repr__(self) -> str:
        return "InviterSecrets(<secret>)"

    @property
    def invitation(self) -> Invitation:
        return Invitation(
            _crypto.x25519_public(self.identity_private), _crypto.x25519_public(self.ephemeral_private)
        )

    def to_bytes(self) -> bytes:
        return pack_record("inviter", 1, {"ik": self.identity_private, "ek": self.ephemeral_private})

    @classmethod
    def from_bytes(cls, data: bytes) -> "InviterSecrets":
        """Raises :class:`StateError` on garbage or a record of another type."""
        r = Record(data, "inviter", 1, frozenset({"ik", "ek"}))
        return cls(r.bytes_("ik", _K), r.bytes_("ek", _K))


@dataclass(frozen=True, repr=False)
class JoinerPending:
    """The joiner's state between sending the request and getting the accept."""

    invitation: Invitation
    identity_private: bytes  # ik_b
    ephemeral_private: bytes  # ek_b: also the joiner's first ratchet key pair
    kem_seed: bytes  # ML-KEM-768 private key as its 64-byte FIPS 203 seed

    def __repr__(self) -> str:
        return "JoinerPending(<secret>)"

    def to_bytes(self) -> bytes:
        return pack_record(
            "joiner",
            1,
            {
                "ik_a": self.invitation.identity_key,
                "ek_a": self.invitation.ephemeral_key,
                "ik": self.identity_private,
                "ek": self.ephemeral_private,
                "kem": self.kem_seed,
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "JoinerPending":
        """Raises :class:`StateError` on garbage or a record of another type."""
        r = Record(data, "joiner", 1, frozenset({"ik_a", "ek_a", "ik", "ek", "kem"}))
        return cls(
            Invitation(r.bytes_("ik_a", _K), r.bytes_("ek_a", _K)),
            r.bytes_("ik", _K),
            r.bytes_("ek", _K),
            r.bytes_("kem", MLKEM768_SEED_SIZE),
        )


@dataclass(frozen=True)
class ConnectionRequest:
    """A decrypted connection request (public keys only, no secrets).  The
    agent may persist it while the user decides whether to accept."""

    joiner_identity_key: bytes  # ik_b
    joiner_ephemeral_key: bytes  # ek_b
    kem_public_key: bytes  # ML-KEM-768 encapsulation key
    payload: bytes  # opaque application bytes (the joiner's reply queue)

    def to_bytes(self) -> bytes:
        return pack_record(
            "request",
            1,
            {
                "ik_b": self.joiner_identity_key,
                "ek_b": self.joiner_ephemeral_key,
                "kem": self.kem_public_key,
                "payload": self.payload,
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "ConnectionRequest":
        """Raises :class:`StateError` on garbage or a record of another type."""
        r = Record(data, "request", 1, frozenset({"ik_b", "ek_b", "kem", "payload"}))
        return cls(
            r.bytes_("ik_b", _K),
            r.bytes_("ek_b", _K),
            r.bytes_("kem", MLKEM768_PUBLIC_KEY_SIZE),
            r.bytes_("payload", max_size=0xFFFF),
        )


# --- Key derivation -----------------------------------------------------------------


def _request_key(dh_ik_a: bytes, dh_ek_a: bytes, invitation: Invitation, ek_b: bytes) -> tuple[bytes, bytes]:
    """e2ee.md step 2: (key, nonce) for the request.  The key is used once."""
    out = _crypto.hkdf(
        _F + dh_ik_a + dh_ek_a,
        salt=b"",
        info=_REQUEST_KDF_INFO + invitation.identity_key + invitation.ephemeral_key + ek_b,
        length=32 + AEAD_NONCE_SIZE,
    )
    return out[:32], out[32:]


def _root_key(
    dh1: bytes,
    dh2: bytes,
    dh3: bytes,
    kem_ss: bytes,
    *,
    ik_a: bytes,
    ek_a: bytes,
    ik_b: bytes,
    ek_b: bytes,
    kem_pk: bytes,
    kem_ct: bytes,
) -> tuple[bytes, bytes, bytes]:
    """e2ee.md step 4: SK, shared_hka, shared_nhkb.

    SK = HKDF-SHA512(salt = 0, ikm = 0xFF*32 || DH1 || DH2 || DH3 || ss,
                     info = ROOT_KDF_INFO || SHA-256(transcript)).
    The transcript hash binds every public value of the handshake, including
    the KEM key and ciphertext (defence against KEM re-encapsulation and
    unknown-key-share tricks; see docs/e2ee.md).
    """
    transcript = hashlib.sha256(ik_a + ek_a + ik_b + ek_b + kem_pk + kem_ct).digest()
    out = _crypto.hkdf(_F + dh1 + dh2 + dh3 + kem_ss, salt=b"", info=ROOT_KDF_INFO + transcript, length=96)
    return out[:32], out[32:64], out[64:]


# --- Steps --------------------------------------------------------------------------


def create_invitation(*, rng: Rng = os.urandom) -> tuple[InviterSecrets, Invitation]:
    """e2ee.md step 1: new per-invitation keys ``ik_a``, ``ek_a``."""
    ik_private, _ = _crypto.x25519_keypair(rng)
    ek_private, _ = _crypto.x25519_keypair(rng)
    secrets = InviterSecrets(ik_private, ek_private)
    return secrets, secrets.invitation


def create_request(
    invitation: Invitation,
    payload: bytes,
    *,
    rng: Rng = os.urandom,
    padded_size: int = REQUEST_PADDED_SIZE,
) -> tuple[JoinerPending, bytes]:
    """e2ee.md step 2: the joiner's connection request.

    Returns ``(pending, request_bytes)``; with the default ``padded_size`` the
    request is exactly ``E2E_MESSAGE_SIZE`` bytes.

    Raises:
        HandshakeError: the invitation holds an unusable (low-order) key.
        PaddingError: ``payload`` is longer than ``padded_size - 2``.
    """
    if not isinstance(invitation, Invitation):
        raise TypeError("invitation must be an Invitation (use Invitation.from_bytes)")
    padded = pad(payload, padded_size)
    # e2ee.md step 2a: fresh ik_b, ek_b and ML-KEM-768 key pair.
    ik_private, ik_public = _crypto.x25519_keypair(rng)
    ek_private, ek_public = _crypto.x25519_keypair(rng)
    kem_seed, kem_public = _crypto.mlkem_keypair(rng)
    # e2ee.md step 2b: single-use request key from DH(ek_b, ik_a), DH(ek_b, ek_a).
    key, nonce = _request_key(
        _dh(ek_private, invitation.identity_key, "invitation identity key"),
        _dh(ek_private, invitation.ephemeral_key, "invitation ephemeral key"),
        invitation,
        ek_public,
    )
    # e2ee.md step 2c: version || ek_b in clear, the rest sealed (header is AD).
    header = _VERSION + ek_public
    body = _crypto.aead_encrypt(key, nonce, ik_public + kem_public + padded, header)
    return JoinerPending(invitation, ik_private, ek_private, kem_seed), header + body


def open_request(secrets: InviterSecrets, request: bytes) -> ConnectionRequest:
    """e2ee.md step 3: decrypt and check a connection request.

    Raises:
        HandshakeError: malformed, rewritten in transit, made for another
            invitation, or carrying unusable keys.
    """
    if not isinstance(request, (bytes, bytearray, memoryview)):
        raise HandshakeError(f"connection request must be bytes, got {type(request).__name__}")
    request = bytes(request)
    if len(request) < _REQUEST_MIN:
        raise HandshakeError(f"connection request is {len(request)} bytes; the minimum is {_REQUEST_MIN}")
    if request[0] != E2E_VERSION:
        raise HandshakeError(f"unsupported connection request version {request[0]}")
    header, body = request[: 1 + _K], request[1 + _K :]
    ek_b = header[1:]
    invitation = secrets.invitation
    # e2ee.md step 3a: the same request key, from the invitation's private keys.
    key, nonce = _request_key(
        _dh(secrets.identity_private, ek_b, "request's ephemeral key"),
        _dh(secrets.ephemeral_private, ek_b, "request's ephemeral key"),
        invitation,
        ek_b,
    )
    plain = _crypto.aead_decrypt(key, nonce, body, header)
    if plain is None:
        raise HandshakeError(
            "connection request failed authentication: rewritten in transit or made for another invitation"
        )
    # e2ee.md step 3b: ik_b || ML-KEM key || padded payload.
    ik_b = plain[:_K]
    kem_public = plain[_K : _K + MLKEM768_PUBLIC_KEY_SIZE]
    try:
        payload = unpad(plain[_K + MLKEM768_PUBLIC_KEY_SIZE :])
    except E2EError as exc:
        raise HandshakeError(f"connection request payload is malformed: {exc}") from None
    if ik_b in (ek_b, invitation.identity_key, invitation.ephemeral_key):
        raise HandshakeError("connection request reuses a key where a fresh one is required")
    try:  # e2ee.md step 3c: FIPS 203 modulus check, so a bad key fails here
        _crypto.mlkem_check_public(kem_public)
    except _crypto.KEMError as exc:
        raise HandshakeError(f"connection request's ML-KEM key is unusable: {exc}") from None
    return ConnectionRequest(ik_b, ek_b, kem_public, payload)


def accept_request(
    secrets: InviterSecrets,
    request: ConnectionRequest,
    payload: bytes,
    *,
    rng: Rng = os.urandom,
    padded_size: int = ACCEPT_PADDED_SIZE,
    kem_encapsulate: KemEncapsulate | None = None,
) -> tuple[RatchetState, bytes]:
    """e2ee.md step 4: accept a request; return ``(ratchet_state, accept_bytes)``.

    The accept message is ``version || ML-KEM ciphertext || first ratchet
    message``, the latter carrying ``payload``.  With the default
    ``padded_size`` it is exactly ``E2E_MESSAGE_SIZE`` bytes.

    Args:
        kem_encapsulate: test hook, ``encaps(public_key) -> (ciphertext,
            shared_secret)``; the default is ML-KEM-768 from ``cryptography``,
            whose randomness comes from OpenSSL and cannot be seeded.

    Raises:
        HandshakeError: the request's keys are unusable.
        PaddingError: ``payload`` is longer than ``padded_size - 2``.
    """
    invitation = secrets.invitation
    ik_a, ek_a = invitation.identity_key, invitation.ephemeral_key
    ik_b, ek_b = request.joiner_identity_key, request.joiner_ephemeral_key
    encapsulate = kem_encapsulate or _crypto.mlkem_encapsulate
    # e2ee.md step 4a: encapsulate to the joiner's ML-KEM key.
    try:
        kem_ct, kem_ss = encapsulate(request.kem_public_key)
    except _crypto.KEMError as exc:
        raise HandshakeError(f"connection request's ML-KEM key is unusable: {exc}") from None
    if len(kem_ct) != MLKEM768_CIPHERTEXT_SIZE or len(kem_ss) != 32:
        raise ValueError("kem_encapsulate must return a 1088-byte ciphertext and a 32-byte secret")
    # e2ee.md step 4b: the three DHs.
    dh1 = _dh(secrets.identity_private, ek_b, "joiner's ephemeral key")  # DH(ik_a, ek_b)
    dh2 = _dh(secrets.ephemeral_private, ik_b, "joiner's identity key")  # DH(ek_a, ik_b)
    dh3 = _dh(secrets.ephemeral_private, ek_b, "joiner's ephemeral key")  # DH(ek_a, ek_b)
    # e2ee.md step 4c: hybrid root key.
    sk, hka, nhkb = _root_key(
        dh1, dh2, dh3, kem_ss, ik_a=ik_a, ek_a=ek_a, ik_b=ik_b, ek_b=ek_b,
        kem_pk=request.kem_public_key, kem_ct=kem_ct,
    )
    # e2ee.md step 4d: the inviter is the ratchet's Alice, ek_b is Bob's
    # initial ratchet public key, AD = ik_a || ik_b.
    state = init_sender(sk, hka, nhkb, ek_b, ik_a + ik_b, rng=rng)
    # e2ee.md step 4e: accept = version || KEM ciphertext || first ratchet message.
    state, first = ratchet_encrypt(state, payload, rng=rng, padded_size=padded_size)
    return state, _VERSION + kem_ct + first


def complete_join(
    pending: JoinerPending,
    accept: bytes,
    *,
    rng: Rng = os.urandom,
) -> tuple[RatchetState, bytes]:
    """e2ee.md step 5: finish joining; return ``(ratchet_state, payload)``.

    Raises:
        HandshakeError: malformed, tampered with, or not the answer to our
            request (including a wrong KEM ciphertext or wrong DH keys: the
            first ratchet message then fails authentication).
    """
    if not isinstance(accept, (bytes, bytearray, memoryview)):
        raise HandshakeError(f"accept message must be bytes, got {type(accept).__name__}")
    accept = bytes(accept)
    if len(accept) < _ACCEPT_MIN:
        raise HandshakeError(f"accept message is {len(accept)} bytes; the minimum is {_ACCEPT_MIN}")
    if accept[0] != E2E_VERSION:
        raise HandshakeError(f"unsupported accept message version {accept[0]}")
    kem_ct = accept[1 : 1 + MLKEM768_CIPHERTEXT_SIZE]
    first = accept[1 + MLKEM768_CIPHERTEXT_SIZE :]
    inv = pending.invitation
    ik_a, ek_a = inv.identity_key, inv.ephemeral_key
    ik_b = _crypto.x25519_public(pending.identity_private)
    ek_b = _crypto.x25519_public(pending.ephemeral_private)
    try:  # e2ee.md step 5a
        kem_ss, kem_pk = _crypto.mlkem_decapsulate(pending.kem_seed, kem_ct)
    except _crypto.KEMError as exc:
        raise HandshakeError(f"accept message's ML-KEM ciphertext is unusable: {exc}") from None
    # e2ee.md step 5b: the same three DHs from the other side.
    dh1 = _dh(pending.ephemeral_private, ik_a, "invitation identity key")  # DH(ek_b, ik_a)
    dh2 = _dh(pending.identity_private, ek_a, "invitation ephemeral key")  # DH(ik_b, ek_a)
    dh3 = _dh(pending.ephemeral_private, ek_a, "invitation ephemeral key")  # DH(ek_b, ek_a)
    # e2ee.md step 5c
    sk, hka, nhkb = _root_key(
        dh1, dh2, dh3, kem_ss, ik_a=ik_a, ek_a=ek_a, ik_b=ik_b, ek_b=ek_b, kem_pk=kem_pk, kem_ct=kem_ct
    )
    # e2ee.md steps 5d-5e: Bob's ratchet with key pair ek_b; decrypting the
    # first message authenticates the whole handshake.
    state = init_receiver(sk, hka, nhkb, pending.ephemeral_private, ik_a + ik_b)
    try:
        return ratchet_decrypt(state, first, rng=rng)
    except E2EError as exc:
        raise HandshakeError(
            "accept message failed authentication: tampered with, or not the answer to our request "
            f"(different keys or KEM secret) [{exc}]"
        ) from None
