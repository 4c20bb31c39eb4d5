"""Sizes of keys, headers and wire blobs (docs/e2ee.md, "Sizes").

All end-to-end blobs that go to a relay -- the connection request, the accept
message and every ratchet message -- are padded to exactly ``E2E_MESSAGE_SIZE``
bytes, so a relay cannot tell them apart by length.  Everything below is
derived from that one constant and the primitive sizes; receivers never depend
on these padded sizes (unpadding reads an explicit length), so changing
``E2E_MESSAGE_SIZE`` later does not break compatibility.
"""

from __future__ import annotations

__all__ = [
    "RELAY_MAX_BODY",
    "E2E_MESSAGE_SIZE",
    "E2E_VERSION",
    "X25519_KEY_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_SEED_SIZE",
    "AEAD_TAG_SIZE",
    "AEAD_NONCE_SIZE",
    "HEADER_SIZE",
    "ENCRYPTED_HEADER_SIZE",
    "RATCHET_OVERHEAD",
    "ACCEPT_PREFIX_SIZE",
    "REQUEST_OVERHEAD",
    "PAD_OVERHEAD",
    "MESSAGE_PADDED_SIZE",
    "ACCEPT_PADDED_SIZE",
    "REQUEST_PADDED_SIZE",
    "MAX_MESSAGE_PLAINTEXT",
    "MAX_ACCEPT_PAYLOAD",
    "MAX_REQUEST_PAYLOAD",
    "INVITATION_SIZE",
]

#: Largest message body a relay accepts (relay protocol limit).
RELAY_MAX_BODY = 15_360
#: Every e2e blob is exactly this long.  The 128 bytes below RELAY_MAX_BODY are
#: left for the agent's own envelope around the blob.
E2E_MESSAGE_SIZE = RELAY_MAX_BODY - 128  # 15,232

#: First byte of every e2e blob.  The same value for requests, accept messages
#: and ratchet messages, so this byte does not tell a relay which one it is.
E2E_VERSION = 1

X25519_KEY_SIZE = 32
MLKEM768_PUBLIC_KEY_SIZE = 1184  # FIPS 203 encapsulation key
MLKEM768_CIPHERTEXT_SIZE = 1088
MLKEM768_SEED_SIZE = 64  # FIPS 203 (d, z) seed: the compact private key
AEAD_TAG_SIZE = 16  # Poly1305
AEAD_NONCE_SIZE = 24  # XChaCha20

#: Ratchet header plaintext: ratchet public key, PN (u32), N (u32).
HEADER_SIZE = X25519_KEY_SIZE + 4 + 4  # 40
#: Encrypted header: random nonce + header + tag.
ENCRYPTED_HEADER_SIZE = AEAD_NONCE_SIZE + HEADER_SIZE + AEAD_TAG_SIZE  # 80
#: Version byte + encrypted header + body tag (the body nonce is derived).
RATCHET_OVERHEAD = 1 + ENCRYPTED_HEADER_SIZE + AEAD_TAG_SIZE  # 97
#: Version byte + ML-KEM ciphertext, in front of the first ratchet message.
ACCEPT_PREFIX_SIZE = 1 + MLKEM768_CIPHERTEXT_SIZE  # 1,089
#: Version byte + ek_b + tag + (ik_b + ML-KEM key) inside the ciphertext.
REQUEST_OVERHEAD = (
    1 + X25519_KEY_SIZE + AEAD_TAG_SIZE + X25519_KEY_SIZE + MLKEM768_PUBLIC_KEY_SIZE
)  # 1,265

#: Padding adds a 2-byte big-endian length in front of the data.
PAD_OVERHEAD = 2

MESSAGE_PADDED_SIZE = E2E_MESSAGE_SIZE - RATCHET_OVERHEAD  # 15,135
ACCEPT_PADDED_SIZE = E2E_MESSAGE_SIZE - ACCEPT_PREFIX_SIZE - RATCHET_OVERHEAD  # 14,046
REQUEST_PADDED_SIZE = E2E_MESSAGE_SIZE - REQUEST_OVERHEAD  # 13,967

#: Largest application plaintext for ``ratchet_encrypt`` with default padding.
MAX_MESSAGE_PLAINTEXT = MESSAGE_PADDED_SIZE - PAD_OVERHEAD  # 15,133
#: Largest application payload of the accept message.
MAX_ACCEPT_PAYLOAD = ACCEPT_PADDED_SIZE - PAD_OVERHEAD  # 14,044
#: Largest application payload of a connection request.
MAX_REQUEST_PAYLOAD = REQUEST_PADDED_SIZE - PAD_OVERHEAD  # 13,965

#: Serialized invitation: version byte + ik_a + ek_a (what the QR code carries).
INVITATION_SIZE = 1 + 2 * X25519_KEY_SIZE  # 65
