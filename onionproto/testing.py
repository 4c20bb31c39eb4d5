"""Helpers for deterministic tests and test vectors (no I/O)."""

import hashlib


class DeterministicRng:
    """A reproducible byte stream (SHAKE-256 of a seed and a counter) usable as ``rng``."""

    def __init__(self, seed: bytes):
        self._seed = seed
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        self._counter += 1
        return hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(n)
