"""Workload 5: client crypto (client.e2e, client.db), each with its floor measured in the same run.

* ratchet: ``ratchet_encrypt`` + ``ratchet_decrypt`` pairs/s of 15,232-byte
  messages, one direction (symmetric chain steps) and alternating (a DH
  ratchet step each turn); floor: one XChaCha20-Poly1305 encrypt+decrypt of
  the same size (the AEAD the ratchet uses).
* handshake: the whole connection handshake, both sides (create_invitation,
  create_request, open_request, accept_request, complete_join) with ML-KEM-768,
  and the same with the ML-KEM calls replaced by hash-based stand-ins in this
  process only (X25519 alone: what the post-quantum part costs). Also
  ``accept_request`` alone with the real KEM and with a stub
  ``kem_encapsulate`` hook.
* SQLCipher: ``client.db.open_database`` of an existing store (PBKDF2-SHA512,
  256,000 iterations, then schema check) vs opening the same kind of file
  with a raw 256-bit key (no KDF).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .common import Result, Row, ratio


def rate(fn, seconds: float, batch: int = 1) -> float:
    """Calls of ``fn`` per second over about ``seconds`` (after one warm-up call)."""
    fn()
    n = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


def conversation():
    from onionpost.client import e2e

    secrets, invitation = e2e.create_invitation()
    pending, request = e2e.create_request(invitation, b"request")
    alice, accept = e2e.accept_request(secrets, e2e.open_request(secrets, request), b"accept")
    bob, _ = e2e.complete_join(pending, accept)
    return alice, bob


def ratchet_rates(seconds: float) -> dict:
    from onionpost.client import e2e
    from onionpost.client.e2e import _crypto

    text = os.urandom(1000)
    state = {}
    state["a"], state["b"] = conversation()

    def one_way():
        state["a"], ct = e2e.ratchet_encrypt(state["a"], text)
        state["b"], pt = e2e.ratchet_decrypt(state["b"], ct)

    state2 = {}
    state2["a"], state2["b"] = conversation()
    turn = [0]

    def alternating():
        x, y = ("a", "b") if turn[0] % 2 == 0 else ("b", "a")
        turn[0] += 1
        state2[x], ct = e2e.ratchet_encrypt(state2[x], text)
        state2[y], _ = e2e.ratchet_decrypt(state2[y], ct)

    key, nonce = os.urandom(32), os.urandom(24)
    blob = os.urandom(e2e.E2E_MESSAGE_SIZE - 16)

    def aead():
        ct = _crypto.aead_encrypt(key, nonce, blob, b"")
        _crypto.aead_decrypt(key, nonce, ct, b"")

    one_way()
    _, probe = e2e.ratchet_encrypt(state["a"], text)
    return {
        "message_bytes": len(probe),
        "one_way_pairs_per_s": rate(one_way, seconds, 20),
        "alternating_pairs_per_s": rate(alternating, seconds, 20),
        "aead_pairs_per_s": rate(aead, seconds, 50),
    }


class _StubKEM:
    """ML-KEM-768 stand-ins with the right sizes, consistent between the two sides, costing two hashes."""

    @staticmethod
    def public(seed: bytes) -> bytes:
        return hashlib.shake_256(b"pk" + seed).digest(1184)

    @classmethod
    def keypair(cls, rng):
        seed = rng(64)
        return seed, cls.public(seed)

    @staticmethod
    def check(public_key: bytes) -> None:
        return None

    @staticmethod
    def encapsulate(public_key: bytes):
        ct = os.urandom(1088)
        return ct, hashlib.sha256(public_key[:32] + ct).digest()

    @classmethod
    def decapsulate(cls, seed: bytes, ct: bytes):
        pk = cls.public(seed)
        return hashlib.sha256(pk[:32] + ct).digest(), pk


def handshake_rates(seconds: float) -> dict:
    from onionpost.client import e2e
    from onionpost.client.e2e import _crypto

    def full():
        conversation()

    secrets, invitation = e2e.create_invitation()
    pending, request = e2e.create_request(invitation, b"request")
    opened = e2e.open_request(secrets, request)

    def accept_real():
        e2e.accept_request(secrets, opened, b"accept")

    def accept_stub():
        e2e.accept_request(secrets, opened, b"accept", kem_encapsulate=_StubKEM.encapsulate)

    out = {"full_with_mlkem_per_s": rate(full, seconds, 5), "accept_with_mlkem_per_s": rate(accept_real, seconds, 10),
           "accept_stub_hook_per_s": rate(accept_stub, seconds, 10)}
    saved = (_crypto.mlkem_keypair, _crypto.mlkem_check_public, _crypto.mlkem_encapsulate, _crypto.mlkem_decapsulate)
    try:
        _crypto.mlkem_keypair, _crypto.mlkem_check_public = _StubKEM.keypair, _StubKEM.check
        _crypto.mlkem_encapsulate, _crypto.mlkem_decapsulate = _StubKEM.encapsulate, _StubKEM.decapsulate
        conversation()  # the stubs agree with each other: the handshake completes
        out["full_without_mlkem_per_s"] = rate(full, seconds, 5)
    finally:
        _crypto.mlkem_keypair, _crypto.mlkem_check_public, _crypto.mlkem_encapsulate, _crypto.mlkem_decapsulate = saved
    return out


def sqlcipher_open(workdir: Path, runs: int) -> dict:
    import sqlcipher3

    from onionpost.client.db import open_database

    home = workdir / "client-home"
    open_database(home, "correct horse battery staple", create=True).close()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        open_database(home, "correct horse battery staple", create=False).close()
        times.append(time.perf_counter() - t0)
    raw_path = workdir / "raw-key.db"
    key = os.urandom(32).hex()
    conn = sqlcipher3.connect(str(raw_path))
    conn.execute(f"PRAGMA key = \"x'{key}'\"")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    raw_times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conn = sqlcipher3.connect(str(raw_path), isolation_level=None)
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.close()
        raw_times.append(time.perf_counter() - t0)
    times.sort()
    raw_times.sort()
    return {"open_ms": 1000 * times[len(times) // 2], "raw_key_open_ms": 1000 * raw_times[len(raw_times) // 2], "runs": runs}


def run(quick: bool, workdir: Path) -> Result:
    seconds = 1.0 if quick else 3.0
    result = Result("crypto")
    r = ratchet_rates(seconds)
    h = handshake_rates(seconds)
    s = sqlcipher_open(workdir, 3 if quick else 7)
    result.details = {"ratchet": r, "handshake": h, "sqlcipher": s}
    result.rows += [
        Row("crypto", f"ratchet encrypt+decrypt, one direction ({r['message_bytes']:,} B)", r["one_way_pairs_per_s"], r["aead_pairs_per_s"],
            "XChaCha20-Poly1305 alone", "pairs/s", ratio(r["one_way_pairs_per_s"], r["aead_pairs_per_s"])),
        Row("crypto", "ratchet encrypt+decrypt, alternating (DH step each turn)", r["alternating_pairs_per_s"], r["aead_pairs_per_s"],
            "XChaCha20-Poly1305 alone", "pairs/s", ratio(r["alternating_pairs_per_s"], r["aead_pairs_per_s"])),
        Row("crypto", "connection handshake, both sides, X25519 + ML-KEM-768", h["full_with_mlkem_per_s"], h["full_without_mlkem_per_s"],
            "same, ML-KEM stubbed", "handshakes/s", ratio(h["full_with_mlkem_per_s"], h["full_without_mlkem_per_s"]),
            note=f"{1000 / h['full_with_mlkem_per_s']:.2f} ms vs {1000 / h['full_without_mlkem_per_s']:.2f} ms per handshake"),
        Row("crypto", "accept_request (inviter's step)", h["accept_with_mlkem_per_s"], h["accept_stub_hook_per_s"],
            "stub kem_encapsulate hook", "calls/s", ratio(h["accept_with_mlkem_per_s"], h["accept_stub_hook_per_s"])),
        Row("crypto", "SQLCipher open (password, PBKDF2 256k)", s["open_ms"], s["raw_key_open_ms"], "raw-key open (no KDF)", "ms",
            ratio(s["open_ms"], s["raw_key_open_ms"]), note=f"median of {s['runs']}"),
    ]
    return result
