"""Double Ratchet with header encryption, as pure functions over immutable state.

This follows section 4 ("Double Ratchet with header encryption") of the Signal
specification, https://signal.org/docs/specifications/doubleratchet/ ; comments
name the spec's functions (``RatchetEncryptHE``, ``DHRatchetHE``...) where the
code implements them.  Parameters are in docs/e2ee.md, "Ratchet".

Differences from the spec's pseudocode, all deliberate:

* State is an immutable :class:`RatchetState`.  :func:`ratchet_encrypt` and
  :func:`ratchet_decrypt` return a *new* state; on any error they raise and the
  caller's state is still the valid current one (the spec's "if an exception is
  raised, discard all changes" comes for free).
* Replays are reported as :class:`ReplayError` instead of a generic failure
  (message number below the receiving counter, or a header that decrypts under
  a skipped-key chain or the previous receiving header key).
* Skipped message keys are bounded per chain (``MAX_SKIP``) *and* in total
  (``MAX_SKIPPED_TOTAL``, oldest evicted first).
* Every plaintext is padded to a fixed size before encryption
  (:mod:`client.e2e.padding`) so ciphertext length reveals nothing.

Wire format of a ratchet message (docs/e2ee.md, "Ratchet message")::

    version (1) || nonce (24) || XChaCha20-Poly1305(HK, header (40)) || body ciphertext
    header = ratchet public key (32) || PN (u32 BE) || N (u32 BE)
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from typing import Callable

from . import _crypto
from ._codec import Record, pack_record
from .errors import DecryptError, ReplayError, SkipLimitError, StateError
from .padding import pad, unpad
from .sizes import (
    AEAD_NONCE_SIZE,
    E2E_VERSION,
    ENCRYPTED_HEADER_SIZE,
    HEADER_SIZE,
    MESSAGE_PADDED_SIZE,
    RATCHET_OVERHEAD,
    X25519_KEY_SIZE,
)

__all__ = [
    "MAX_SKIP",
    "MAX_SKIPPED_TOTAL",
    "SkippedKey",
    "RatchetState",
    "init_sender",
    "init_receiver",
    "ratchet_encrypt",
    "ratchet_decrypt",
]

#: Most message keys one incoming message may make us skip in one chain.
MAX_SKIP = 1000
#: Most skipped message keys kept in total; the oldest are evicted first.
MAX_SKIPPED_TOTAL = 2000
#: Message counters are u32 on the wire.
MAX_COUNTER = 0xFFFF_FFFF

_VERSION = bytes([E2E_VERSION])
_KEY = 32
_AD_SIZE = 2 * X25519_KEY_SIZE
_INFO_ROOT = b"onionpost ratchet root v1"
_INFO_MESSAGE = b"onionpost ratchet message key v1"
_HEADER_AD = b"onionpost ratchet header v1"
_HEADER = struct.Struct(">32sII")
_STATE_TYPE = "ratchet"
_STATE_VERSION = 1

Rng = Callable[[int], bytes]


# --- KDFs (docs/e2ee.md, "Ratchet parameters") ------------------------------------


def _kdf_rk_he(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF_RK_HE: HKDF-SHA512(salt=RK, ikm=DH output) -> (RK, CK, NHK)."""
    out = _crypto.hkdf(dh_out, salt=rk, info=_INFO_ROOT, length=3 * _KEY)
    return out[:32], out[32:64], out[64:]


def _kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """KDF_CK: HMAC-SHA256 with constant 0x01 (message key) and 0x02 (next
    chain key), as recommended in spec section 5.2.  Returns (CK, MK)."""
    return _crypto.hmac_sha256(ck, b"\x02"), _crypto.hmac_sha256(ck, b"\x01")


def _body_key(mk: bytes) -> tuple[bytes, bytes]:
    """ENCRYPT's key schedule (spec 5.2): HKDF(mk) -> AEAD key and nonce.  The
    message key is used exactly once, so a derived nonce is safe."""
    out = _crypto.hkdf(mk, salt=b"", info=_INFO_MESSAGE, length=_KEY + AEAD_NONCE_SIZE)
    return out[:_KEY], out[_KEY:]


def _encrypt_body(mk: bytes, padded: bytes, ad: bytes) -> bytes:
    key, nonce = _body_key(mk)
    return _crypto.aead_encrypt(key, nonce, padded, ad)


def _decrypt_body(mk: bytes, body: bytes, ad: bytes) -> bytes | None:
    key, nonce = _body_key(mk)
    return _crypto.aead_decrypt(key, nonce, body, ad)


def _hencrypt(hk: bytes, header: bytes, rng: Rng) -> bytes:
    """HENCRYPT: the header key encrypts many headers, so the nonce is random
    (24 bytes: collisions are negligible)."""
    nonce = _crypto.random_bytes(rng, AEAD_NONCE_SIZE)
    return nonce + _crypto.aead_encrypt(hk, nonce, header, _HEADER_AD)


def _hdecrypt(hk: bytes | None, enc_header: bytes) -> tuple[bytes, int, int] | None:
    """HDECRYPT: (dh, pn, n), or None if ``hk`` does not authenticate it."""
    if hk is None:
        return None
    plain = _crypto.aead_decrypt(hk, enc_header[:AEAD_NONCE_SIZE], enc_header[AEAD_NONCE_SIZE:], _HEADER_AD)
    if plain is None or len(plain) != HEADER_SIZE:
        return None
    return _HEADER.unpack(plain)


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return _crypto.x25519(private, public)
    except _crypto.DHError:
        raise DecryptError("peer's ratchet public key is a low-order point; refusing it") from None


# --- State ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """A message key kept for a message that has not arrived yet."""

    header_key: bytes
    n: int
    message_key: bytes


@dataclass(frozen=True, repr=False)
class RatchetState:
    """One side of a conversation.  Immutable; treat it as an opaque value and
    persist it with :meth:`to_bytes`.  Field names follow the spec (section 4.3).

    ``ad`` is ``ik_a || ik_b`` (inviter's identity key first); ``is_inviter``
    tells which half is ours.  ``prev_hkr`` is the receiving header key of the
    previous chain, kept only to recognize replays of old-chain messages.
    """

    is_inviter: bool
    ad: bytes
    dhs_private: bytes
    dhs_public: bytes
    dhr: bytes | None
    rk: bytes
    cks: bytes | None
    ckr: bytes | None
    ns: int
    nr: int
    pn: int
    hks: bytes | None
    hkr: bytes | None
    nhks: bytes
    nhkr: bytes
    prev_hkr: bytes | None
    skipped: tuple[SkippedKey, ...] = ()

    def __repr__(self) -> str:  # never print key material
        return (
            f"RatchetState(inviter={self.is_inviter}, can_send={self.can_send}, "
            f"ns={self.ns}, nr={self.nr}, pn={self.pn}, skipped={len(self.skipped)})"
        )

    @property
    def can_send(self) -> bool:
        """False only for the joiner before the inviter's first message arrived."""
        return self.cks is not None and self.hks is not None

    @property
    def local_identity_key(self) -> bytes:
        return self.ad[:32] if self.is_inviter else self.ad[32:]

    @property
    def remote_identity_key(self) -> bytes:
        return self.ad[32:] if self.is_inviter else self.ad[:32]

    # -- persistence --

    def to_bytes(self) -> bytes:
        """Serialize (msgpack, versioned).  The result holds secret keys: store
        it only in the encrypted client database."""
        return pack_record(
            _STATE_TYPE,
            _STATE_VERSION,
            {
                "inviter": self.is_inviter,
                "ad": self.ad,
                "dhs": self.dhs_private,
                "dhr": self.dhr,
                "rk": self.rk,
                "cks": self.cks,
                "ckr": self.ckr,
                "ns": self.ns,
                "nr": self.nr,
                "pn": self.pn,
                "hks": self.hks,
                "hkr": self.hkr,
                "nhks": self.nhks,
                "nhkr": self.nhkr,
                "phkr": self.prev_hkr,
                "skipped": [[k.header_key, k.n, k.message_key] for k in self.skipped],
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "RatchetState":
        """Inverse of :meth:`to_bytes`.

        Raises:
            StateError: not a ratchet state record, unsupported version, or any
                field has the wrong type, length or range.
        """
        r = Record(data, _STATE_TYPE, _STATE_VERSION, _STATE_FIELDS)
        skipped = []
        for entry in r.list_("skipped", MAX_SKIPPED_TOTAL):
            if (
                not isinstance(entry, list)
                or len(entry) != 3
                or not isinstance(entry[0], bytes)
                or len(entry[0]) != _KEY
                or not isinstance(entry[1], int)
                or isinstance(entry[1], bool)
                or not 0 <= entry[1] <= MAX_COUNTER
                or not isinstance(entry[2], bytes)
                or len(entry[2]) != _KEY
            ):
                raise StateError("ratchet state field 'skipped' has a malformed entry")
            skipped.append(SkippedKey(entry[0], entry[1], entry[2]))
        dhs_private = r.bytes_("dhs", X25519_KEY_SIZE)
        state = cls(
            is_inviter=r.bool_("inviter"),
            ad=r.bytes_("ad", _AD_SIZE),
            dhs_private=dhs_private,
            dhs_public=_crypto.x25519_public(dhs_private),
            dhr=r.bytes_("dhr", X25519_KEY_SIZE, optional=True),
            rk=r.bytes_("rk", _KEY),
            cks=r.bytes_("cks", _KEY, optional=True),
            ckr=r.bytes_("ckr", _KEY, optional=True),
            ns=r.int_("ns", 0, MAX_COUNTER),
            nr=r.int_("nr", 0, MAX_COUNTER),
            pn=r.int_("pn", 0, MAX_COUNTER),
            hks=r.bytes_("hks", _KEY, optional=True),
            hkr=r.bytes_("hkr", _KEY, optional=True),
            nhks=r.bytes_("nhks", _KEY),
            nhkr=r.bytes_("nhkr", _KEY),
            prev_hkr=r.bytes_("phkr", _KEY, optional=True),
            skipped=tuple(skipped),
        )
        if (state.cks is None) != (state.hks is None) or (state.ckr is None) != (state.hkr is None):
            raise StateError("ratchet state is inconsistent: a chain key and its header key must be set together")
        return state


_STATE_FIELDS = frozenset(
    {"inviter", "ad", "dhs", "dhr", "rk", "cks", "ckr", "ns", "nr", "pn", "hks", "hkr", "nhks", "nhkr", "phkr", "skipped"}
)


def _check_key(name: str, value: bytes, size: int = _KEY) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
    return bytes(value)


def init_sender(
    sk: bytes,
    shared_hka: bytes,
    shared_nhkb: bytes,
    peer_ratchet_public: bytes,
    ad: bytes,
    *,
    rng: Rng = os.urandom,
) -> RatchetState:
    """RatchetInitAliceHE.  The inviter is Alice: she sends first."""
    sk = _check_key("sk", sk)
    peer_ratchet_public = _check_key("peer_ratchet_public", peer_ratchet_public)
    dhs_private, dhs_public = _crypto.x25519_keypair(rng)
    rk, cks, nhks = _kdf_rk_he(sk, _dh(dhs_private, peer_ratchet_public))
    return RatchetState(
        is_inviter=True,
        ad=_check_key("ad", ad, _AD_SIZE),
        dhs_private=dhs_private,
        dhs_public=dhs_public,
        dhr=peer_ratchet_public,
        rk=rk,
        cks=cks,
        ckr=None,
        ns=0,
        nr=0,
        pn=0,
        hks=_check_key("shared_hka", shared_hka),
        hkr=None,
        nhks=nhks,
        nhkr=_check_key("shared_nhkb", shared_nhkb),
        prev_hkr=None,
    )


def init_receiver(
    sk: bytes,
    shared_hka: bytes,
    shared_nhkb: bytes,
    own_ratchet_private: bytes,
    ad: bytes,
) -> RatchetState:
    """RatchetInitBobHE.  The joiner is Bob; his first ratchet key pair is
    ``ek_b`` from the handshake.  He cannot send before receiving."""
    own_ratchet_private = _check_key("own_ratchet_private", own_ratchet_private)
    return RatchetState(
        is_inviter=False,
        ad=_check_key("ad", ad, _AD_SIZE),
        dhs_private=own_ratchet_private,
        dhs_public=_crypto.x25519_public(own_ratchet_private),
        dhr=None,
        rk=_check_key("sk", sk),
        cks=None,
        ckr=None,
        ns=0,
        nr=0,
        pn=0,
        hks=None,
        hkr=None,
        nhks=_check_key("shared_nhkb", shared_nhkb),
        nhkr=_check_key("shared_hka", shared_hka),
        prev_hkr=None,
    )


# --- Encrypt ----------------------------------------------------------------------


def ratchet_encrypt(
    state: RatchetState,
    plaintext: bytes,
    *,
    rng: Rng = os.urandom,
    padded_size: int = MESSAGE_PADDED_SIZE,
) -> tuple[RatchetState, bytes]:
    """RatchetEncryptHE: pad, encrypt, and return ``(new_state, message)``.

    Args:
        state: current state (not modified).
        plaintext: application bytes, at most ``padded_size - 2`` long.
        rng: randomness for the header nonce.
        padded_size: padded plaintext size; the message is
            ``padded_size + RATCHET_OVERHEAD`` bytes.

    Raises:
        StateError: this side cannot send yet, or the chain is exhausted.
        PaddingError: the plaintext is too long.
    """
    if not state.can_send:
        raise StateError(
            "cannot send yet: the joiner may send only after decrypting the inviter's first message"
        )
    if state.ns >= MAX_COUNTER:
        raise StateError("sending chain exhausted (2^32-1 messages without a reply); re-key the connection")
    padded = pad(plaintext, padded_size)
    cks, mk = _kdf_ck(state.cks)
    enc_header = _hencrypt(state.hks, _HEADER.pack(state.dhs_public, state.pn, state.ns), rng)
    prefix = _VERSION + enc_header
    body = _encrypt_body(mk, padded, state.ad + prefix)
    return dataclasses.replace(state, cks=cks, ns=state.ns + 1), prefix + body


# --- Decrypt ----------------------------------------------------------------------


def _skip_message_keys(
    ckr: bytes | None, hkr: bytes | None, nr: int, until: int, skipped: list[SkippedKey]
) -> tuple[bytes | None, int]:
    """SkipMessageKeysHE, appending to ``skipped`` (a private list)."""
    if ckr is None:
        return ckr, nr  # no receiving chain yet: nothing to derive or store
    if until > nr + MAX_SKIP:
        raise SkipLimitError(
            f"message would skip {until - nr} messages in one chain; the limit is {MAX_SKIP} "
            "(lost messages or a key-exhaustion attempt)"
        )
    while nr < until:
        ckr, mk = _kdf_ck(ckr)
        skipped.append(SkippedKey(hkr, nr, mk))
        nr += 1
    return ckr, nr


def _try_skipped_message_keys(
    state: RatchetState, enc_header: bytes, body: bytes, body_ad: bytes
) -> tuple[RatchetState, bytes] | None:
    """TrySkippedMessageKeysHE.  Tries each distinct skipped header key once."""
    tried: set[bytes] = set()
    for entry in state.skipped:
        hk = entry.header_key
        if hk in tried:
            continue
        tried.add(hk)
        header = _hdecrypt(hk, enc_header)
        if header is None:
            continue
        n = header[2]
        for index, candidate in enumerate(state.skipped):
            if candidate.header_key == hk and candidate.n == n:
                padded = _decrypt_body(candidate.message_key, body, body_ad)
                if padded is None:
                    raise DecryptError("message body failed authentication (tampered with); state unchanged")
                plaintext = unpad(padded)
                remaining = state.skipped[:index] + state.skipped[index + 1 :]
                return dataclasses.replace(state, skipped=remaining), plaintext
        if hk == state.hkr:
            return None  # current chain, a message we have not skipped: normal path
        raise ReplayError(
            f"message {n} of an earlier chain was already decrypted (replay or duplicate delivery), "
            "or its key was evicted"
        )
    return None


def ratchet_decrypt(
    state: RatchetState,
    message: bytes,
    *,
    rng: Rng = os.urandom,
) -> tuple[RatchetState, bytes]:
    """RatchetDecryptHE: return ``(new_state, plaintext)``.

    ``rng`` makes the new ratchet key pair when the message starts a new DH
    ratchet step.  On any error the caller's ``state`` remains valid.

    Raises:
        DecryptError: malformed, tampered with, or not for this conversation.
        ReplayError: the message's key was already used.
        SkipLimitError: the message would skip more than ``MAX_SKIP`` keys.
        PaddingError: authentic, but the padded plaintext is malformed.
    """
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise DecryptError(f"a ratchet message must be bytes, got {type(message).__name__}")
    message = bytes(message)
    if len(message) < RATCHET_OVERHEAD:
        raise DecryptError(f"ratchet message is {len(message)} bytes; the minimum is {RATCHET_OVERHEAD}")
    if message[0] != E2E_VERSION:
        raise DecryptError(f"unsupported message version {message[0]} (this code reads version {E2E_VERSION})")
    split = 1 + ENCRYPTED_HEADER_SIZE
    enc_header, body = message[1:split], message[split:]
    body_ad = state.ad + message[:split]

    result = _try_skipped_message_keys(state, enc_header, body, body_ad)
    if result is not None:
        return result

    # DecryptHeader: current header key first, then the next one.
    header = _hdecrypt(state.hkr, enc_header)
    dh_ratchet = False
    if header is None:
        header = _hdecrypt(state.nhkr, enc_header)
        dh_ratchet = header is not None
    if header is None:
        if _hdecrypt(state.prev_hkr, enc_header) is not None:
            raise ReplayError(
                "message from the previous chain whose key was already used (replay or duplicate "
                "delivery) or evicted"
            )
        raise DecryptError(
            "cannot decrypt the message header: tampered with, not for this conversation, "
            "or from a chain whose keys were discarded"
        )
    dh, pn, n = header

    skipped = list(state.skipped)
    fields: dict = {}
    ckr, nr, hkr = state.ckr, state.nr, state.hkr
    if dh_ratchet:
        ckr, nr = _skip_message_keys(ckr, hkr, nr, pn, skipped)
        # DHRatchetHE
        rk, ckr, nhkr = _kdf_rk_he(state.rk, _dh(state.dhs_private, dh))
        dhs_private, dhs_public = _crypto.x25519_keypair(rng)
        rk, cks, nhks = _kdf_rk_he(rk, _dh(dhs_private, dh))
        nr, hkr = 0, state.nhkr
        fields.update(
            pn=state.ns,
            ns=0,
            hks=state.nhks,
            hkr=hkr,
            prev_hkr=state.hkr,
            dhr=dh,
            rk=rk,
            nhkr=nhkr,
            dhs_private=dhs_private,
            dhs_public=dhs_public,
            cks=cks,
            nhks=nhks,
        )
    else:
        if n < nr:
            raise ReplayError(
                f"message {n} of the current chain was already decrypted (replay or duplicate delivery)"
            )
        if dh != state.dhr:
            raise DecryptError("header's ratchet key does not match the current receiving chain")
    ckr, nr = _skip_message_keys(ckr, hkr, nr, n, skipped)
    ckr, mk = _kdf_ck(ckr)
    padded = _decrypt_body(mk, body, body_ad)
    if padded is None:
        raise DecryptError("message body failed authentication (tampered with); state unchanged")
    plaintext = unpad(padded)
    if len(skipped) > MAX_SKIPPED_TOTAL:
        skipped = skipped[-MAX_SKIPPED_TOTAL:]  # evict the oldest
    new_state = dataclasses.replace(state, ckr=ckr, nr=nr + 1, skipped=tuple(skipped), **fields)
    return new_state, plaintext
