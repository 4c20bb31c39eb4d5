"""Where vantage points and attacks plug into the lab (docs/lab.md, "Adding an attack").

A **capture** records one vantage point during a run: ``start(ctx)`` once every
user is connected (before the schedule), ``stop(ctx)`` after the schedule,
before anyone goes offline. It writes its files under ``ctx.run_dir`` and may
write flows (``flows.write_flows``) for the exports. ``ctx.people`` are the
running users (``population.Person``: ``name``, ``home``, ``proc``).

An **attack** reads one run's captured files and returns scores:
``score(run_dir) -> {signal: {question: (labels, scores)}}`` (numpy arrays of
the same length; labels are the truth, scores higher = more likely linked).
The report turns them into ROC curves, AUC and TPR at fixed FPR, per vantage
point, isolation mode and defence. Attacks never run traffic, so
``onionpost lab report DIR`` reruns them on the captured data.

The relay operator's view (``node run --trace``) is always captured; the
built-in relay-side linkage attack is registered here. Other modules plug in
by defining ``register(registry)`` and being listed in ``PLUGINS``; a plugin
that is not installed, or whose own dependency is missing, is skipped and the
report says so.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PLUGINS = ("onionpost.lab.guardlink", "onionpost.lab.flowcorr")

Scores = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


@dataclass
class RunContext:
    run_dir: Path
    """traces/<variant>/run<k>: everything one run captured."""
    testnet: Path | None
    """The private Tor network's folder, None on loopback."""
    people: list = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    """Per-capture remarks for the report (which source was used, what was not available)."""


@dataclass(frozen=True)
class Capture:
    name: str
    start: Callable[[RunContext], None]
    stop: Callable[[RunContext], None]


@dataclass(frozen=True)
class Attack:
    name: str
    vantage: str
    """Who must be watching: 'relay', 'guard', 'guard+relay', 'two relays'."""
    score: Callable[[Path], Scores]
    description: str = ""


CAPTURES: dict[str, Capture] = {}
ATTACKS: dict[str, Attack] = {}
SKIPPED: dict[str, str] = {}
"""Plugins not loaded, with the reason."""


def register_capture(capture: Capture) -> None:
    CAPTURES[capture.name] = capture


def register_attack(attack: Attack) -> None:
    ATTACKS[attack.name] = attack


def _linkage(run_dir: Path, relays: list[str]) -> Scores:
    """The linkage signals (``linkage.score_all``) over the observed interval, on the queues these relays hold."""
    from onionpost.lab import linkage

    pr = relay_pairs(run_dir, relays)
    scores = linkage.score_all(pr)
    return {name: {q: (pr.labels(q), s) for q in linkage.QUESTIONS} for name, s in scores.items()}


def relay_pairs(run_dir: Path, relays: list[str]):
    """``linkage.pairs`` of the queues these relays hold, from their traces over the observed interval.

    Several relays' traces are merged as one operator sees them: session numbers kept apart per relay.
    """
    from onionpost.lab import linkage, relayview
    from onionpost.lab.flows import queues_seen

    run = json.loads((run_dir / "run.json").read_text())
    events, seen = [], set()
    for index, relay in enumerate(relays):
        path = run_dir / f"{relay}.jsonl"
        seen |= queues_seen(path)
        with open(path, encoding="utf-8") as trace:
            for e in map(json.loads, filter(str.strip, trace)):
                if e["t"] >= run["observed_from"]:
                    if "session" in e:
                        e["session"] += index * _SESSIONS_APART
                    events.append(e)
    truth = json.loads((run_dir / "queues.json").read_text())
    held = {"queues": [q for q in truth["queues"] if q["rid"] in seen or q["snd"] in seen]}
    return linkage.pairs(relayview.load(events, held))


_SESSIONS_APART = 1_000_000_000


def relay_linkage(run_dir: Path) -> Scores:
    """One relay operator (relay0): every pair of the queues it holds."""
    return _linkage(run_dir, ["relay0"])


def two_relay_linkage(run_dir: Path) -> Scores:
    """One operator running relay0 and relay1: every pair of the queues either holds."""
    if not (run_dir / "relay1.jsonl").is_file():
        raise FileNotFoundError(2, "no second relay in this run", str(run_dir / "relay1.jsonl"))
    return _linkage(run_dir, ["relay0", "relay1"])


register_attack(Attack("relay-linkage", "relay", relay_linkage,
                       "score every pair of queues on one relay from activity timing (every signal of onionpost.lab.linkage)"))
register_attack(Attack("two-relay-linkage", "two relays", two_relay_linkage,
                       "the same signals over two colluding relays' merged traces"))

_loaded = False


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import sys

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            SKIPPED[name] = str(exc)
            continue
        hook = getattr(module, "register", None)
        if hook is None:
            SKIPPED[name] = "defines no register(registry)"
            continue
        hook(sys.modules[__name__])
