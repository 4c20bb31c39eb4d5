"""Synthetic guard-link flows and relay sessions with a known answer (for ``flowcorr``).

``n_people`` each hold ``sessions_per_person`` relay sessions. A session is a
Poisson stream of blocks: a command (a block in, its response out) or a
pushed message (a block out). What the relay logs is the session itself.
A person's guard-link flow is all of their sessions' blocks as the client's
link carries them: each block is cut into a few TCP segments (with Tor's cell
overhead), sent ``latency`` (+ jitter) before the relay logs it or received
that long after; some segments are dropped from the capture, and Tor's
padding cells add noise.

- ``correlated``: each flow is built from its owner's sessions. Every
  attack worth the name links them: AUC near 1.
- ``independent``: each flow is built from another, independent draw of
  sessions, so its owner label says nothing: AUC near 0.5.

Seeded: the same arguments give the same flows.
"""

from __future__ import annotations

import numpy as np

from onionpost.lab.flowcorr import BLOCK, Series

MODES = ("correlated", "independent")
CELL = 514
CELL_PAYLOAD = 509
TLS_RECORD = 543  # one cell in a TLS record, as the link carries it


def _sessions(person: str, count: int, rng: np.random.Generator, start: float, duration: float,
              rate: float, prefix: str) -> list[Series]:
    out = []
    for k in range(count):
        n = rng.poisson(rate * duration)
        t = np.sort(rng.uniform(0, duration, n)) + start
        command = rng.random(n) < 0.6
        times, sizes = [], []
        for at, cmd in zip(t.tolist(), command.tolist()):
            if cmd:
                times += [at, at]
                sizes += [BLOCK, -BLOCK]
            else:
                times.append(at)
                sizes.append(-BLOCK)
        out.append(Series(f"{prefix}{person}-s{k}", np.asarray(times), np.asarray(sizes, dtype=np.int64), person))
    return out


def _on_the_link(sessions: list[Series], rng: np.random.Generator, latency: float, jitter: float,
                 drop: float, noise_rate: float, start: float, duration: float) -> tuple[np.ndarray, np.ndarray]:
    times, sizes = [], []
    wire = (BLOCK // CELL_PAYLOAD + 1) * TLS_RECORD
    for s in sessions:
        for at, size in zip(s.t.tolist(), s.size.tolist()):
            sign = 1 if size > 0 else -1
            # The client sends before the relay logs it, and receives after.
            base = at - sign * (latency + rng.uniform(0, jitter))
            pieces = int(rng.integers(2, 12))
            cuts = np.sort(rng.integers(1, wire, pieces - 1))
            segs = np.diff(np.concatenate([[0], cuts, [wire]]))
            segs = segs[segs > 0]
            t = base + np.cumsum(rng.exponential(0.002, len(segs)))
            keep = rng.random(len(segs)) >= drop
            times.extend(t[keep].tolist())
            sizes.extend((sign * segs[keep]).tolist())
    n_noise = rng.poisson(noise_rate * duration)
    times.extend((start + rng.uniform(0, duration, n_noise)).tolist())
    sizes.extend((rng.choice([-1, 1], n_noise) * TLS_RECORD).tolist())
    order = np.argsort(times, kind="stable")
    return np.asarray(times)[order], np.asarray(sizes, dtype=np.int64)[order]


def guard_flows(sessions: list[Series], *, seed: int = 0, latency: float = 0.2, jitter: float = 0.1,
                drop: float = 0.05, noise_rate: float = 0.3) -> list[Series]:
    """One guard-link flow per owner of ``sessions`` (for instance the
    ``flowcorr.relay_sessions`` of a synthetic relay trace), carrying all of
    that owner's sessions as in the correlated mode; sorted by owner."""
    rng = np.random.default_rng(seed)
    every = [s.t for s in sessions if len(s.t)]
    if not every:
        return []
    start = float(min(t.min() for t in every))
    duration = float(max(t.max() for t in every)) - start
    owners = sorted({s.owner for s in sessions if s.owner is not None})
    flows = []
    for person in owners:
        t, size = _on_the_link([s for s in sessions if s.owner == person], rng, latency, jitter, drop, noise_rate,
                               start, duration)
        flows.append(Series(f"guard-{person}", t, size, person))
    return flows


def generate(n_people: int = 10, sessions_per_person: int = 4, *, mode: str = "correlated", seed: int = 0,
             duration: float = 600.0, start: float = 1_700_000_000.0, rate: float = 1 / 30,
             latency: float = 0.2, jitter: float = 0.1, drop: float = 0.05,
             noise_rate: float = 0.3) -> tuple[list[Series], list[Series]]:
    """(guard-link flows, one per person; relay sessions), see the module docstring.

    ``rate`` is blocks per second per session; ``noise_rate`` padding records
    per second per flow.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= drop < 1 or latency < 0 or jitter < 0:
        raise ValueError("drop must be in [0, 1), latency and jitter >= 0")
    rng = np.random.default_rng(seed)
    people = [f"user{p}" for p in range(n_people)]
    sessions, flows = [], []
    for person in people:
        own = _sessions(person, sessions_per_person, rng, start, duration, rate, "")
        sessions += own
        carried = own if mode == "correlated" else _sessions(person, sessions_per_person, rng, start, duration,
                                                               rate, "other-")
        t, size = _on_the_link(carried, rng, latency, jitter, drop, noise_rate, start, duration)
        flows.append(Series(f"guard-{person}", t, size, person))
    return flows, sessions
