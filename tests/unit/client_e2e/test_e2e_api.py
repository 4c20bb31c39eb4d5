"""The public API of client.e2e is pinned; the KDF matches RFC 5869."""

from __future__ import annotations

import onionpost.client.e2e as e2e
from onionpost.client.e2e._crypto import hkdf


def test_exported_members():
    assert e2e.__all__ == sorted(e2e.__all__)
    assert set(e2e.__all__) == {
        "ChainError", "ChainLink", "Classification", "ConnectionRequest", "DecryptError", "E2EError",
        "E2E_MESSAGE_SIZE", "GENESIS_HASH", "HandshakeError", "Invitation", "InviterSecrets", "JoinerPending",
        "MAX_ACCEPT_PAYLOAD", "MAX_MESSAGE_PLAINTEXT", "MAX_REQUEST_PAYLOAD", "MAX_SKIP", "MAX_SKIPPED_TOTAL",
        "MESSAGE_PADDED_SIZE", "PaddingError", "RATCHET_OVERHEAD", "RELAY_MAX_BODY", "RatchetState",
        "ReceiverChain", "ReplayError", "SenderChain", "SkipLimitError", "StateError", "Verdict",
        "accept_request", "classify", "codes_match", "complete_join", "create_invitation", "create_request",
        "decode_message", "encode_message", "format_code", "message_hash", "open_request", "pad",
        "ratchet_decrypt", "ratchet_encrypt", "safety_code", "safety_code_for_state", "unpad",
    }
    for name in e2e.__all__:
        assert hasattr(e2e, name), name


def test_hkdf_rfc5869_test_case_1():
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf(ikm, salt=salt, info=info, length=42, hash_name="sha256")
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_sha512_matches_cryptography():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    for length in (32, 56, 64, 96, 200):
        expected = HKDF(algorithm=hashes.SHA512(), length=length, salt=b"salt", info=b"info").derive(b"ikm")
        assert hkdf(b"ikm", salt=b"salt", info=b"info", length=length) == expected
    expected = HKDF(algorithm=hashes.SHA512(), length=96, salt=None, info=b"i").derive(b"k")
    assert hkdf(b"k", salt=b"", info=b"i", length=96) == expected


def test_module_is_pure():
    """No I/O modules are imported by onionpost.client.e2e."""
    import sys

    checked = []
    for name, module in list(sys.modules.items()):
        if name.startswith("onionpost.client.e2e"):
            checked.append(name)
            source = getattr(module, "__file__", "") or ""
            if source.endswith(".py"):
                text = open(source, encoding="utf-8").read()
                for banned in ("import socket", "import asyncio", "import sqlite3", "open(", "aiohttp"):
                    assert banned not in text, (name, banned)
    assert "onionpost.client.e2e.ratchet" in checked, checked
