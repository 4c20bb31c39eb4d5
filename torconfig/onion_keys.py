"""Ed25519 keys and v3 onion addresses, as tor computes them (pure functions).

Tor keeps an onion service's secret key in "expanded" form: 64 bytes, the
clamped scalar followed by the hash prefix, i.e. SHA-512 of the 32-byte seed.
"""

import base64
import hashlib

import nacl.bindings
import nacl.signing

SEED_SIZE = 32
EXPANDED_SIZE = 64
PUBLIC_KEY_SIZE = 32
ONION_VERSION = 3
ONION_SUFFIX = ".onion"
# hs_ed25519_secret_key: a 32-byte NUL-padded header, then the expanded key.
SECRET_KEY_FILE_HEADER = b"== ed25519v1-secret: type0 ==".ljust(32, b"\0")


def expand_seed(seed: bytes) -> bytes:
    """Return tor's 64-byte expanded secret key for a 32-byte Ed25519 seed."""
    if len(seed) != SEED_SIZE:
        raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, not {len(seed)}")
    digest = bytearray(hashlib.sha512(seed).digest())
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


def expanded_key(key: bytes) -> bytes:
    """Return the expanded form of a 32-byte seed or a 64-byte expanded key."""
    if len(key) == SEED_SIZE:
        return expand_seed(key)
    if len(key) == EXPANDED_SIZE:
        return bytes(key)
    raise ValueError(f"expected a {SEED_SIZE}-byte seed or {EXPANDED_SIZE}-byte expanded key")


def public_key(key: bytes) -> bytes:
    """Return the Ed25519 public key of a 32-byte seed or 64-byte expanded key."""
    if len(key) == SEED_SIZE:
        return bytes(nacl.signing.SigningKey(key).verify_key)
    scalar = expanded_key(key)[:32]
    return nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(scalar)


def _checksum(pubkey: bytes) -> bytes:
    data = b".onion checksum" + pubkey + bytes([ONION_VERSION])
    return hashlib.sha3_256(data).digest()[:2]


def onion_address(pubkey: bytes) -> str:
    """Return the v3 address (``<56 chars>.onion``) of an Ed25519 public key."""
    if len(pubkey) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    raw = pubkey + _checksum(pubkey) + bytes([ONION_VERSION])
    return base64.b32encode(raw).decode().lower() + ONION_SUFFIX


def onion_address_of_key(key: bytes) -> str:
    """Return the v3 address for a 32-byte seed or a 64-byte expanded key."""
    return onion_address(public_key(key))


def service_id(address: str) -> str:
    """Return the 56-character service id, without ``.onion``."""
    address = address.strip().lower()
    return address[: -len(ONION_SUFFIX)] if address.endswith(ONION_SUFFIX) else address


def public_key_from_address(address: str) -> bytes:
    """Decode and check a v3 onion address (with or without ``.onion``).

    Raises:
        ValueError: the address is malformed or its checksum or version is wrong.
    """
    sid = service_id(address)
    if len(sid) != 56:
        raise ValueError("a v3 onion address has 56 base32 characters")
    try:
        raw = base64.b32decode(sid.upper())
    except ValueError as exc:
        raise ValueError("onion address is not base32") from exc
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != ONION_VERSION:
        raise ValueError(f"onion address version {version}, expected {ONION_VERSION}")
    if checksum != _checksum(pubkey):
        raise ValueError("onion address checksum does not match")
    return pubkey


def is_valid_onion_address(address: str) -> bool:
    """Return True if ``address`` is a well-formed v3 onion address."""
    try:
        public_key_from_address(address)
    except ValueError:
        return False
    return True


def to_secret_key_file(key: bytes) -> bytes:
    """Return the ``hs_ed25519_secret_key`` file content for a seed or expanded key."""
    return SECRET_KEY_FILE_HEADER + expanded_key(key)


def from_secret_key_file(data: bytes) -> bytes:
    """Return the 64-byte expanded key stored in an ``hs_ed25519_secret_key`` file."""
    if len(data) != 32 + EXPANDED_SIZE or data[:32] != SECRET_KEY_FILE_HEADER:
        raise ValueError("not an hs_ed25519_secret_key file")
    return data[32:]


def tor_key_blob(key: bytes) -> str:
    """Return the base64 key content ADD_ONION expects for ``ED25519-V3``."""
    return base64.b64encode(expanded_key(key)).decode()
