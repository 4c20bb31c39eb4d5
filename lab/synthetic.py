"""Synthetic relay traces with a known answer, to prove the measurement measures.

A population of ``n_people``, each in a conversation with ``contacts`` others
(a random regular contact graph), all queues on one relay, simulated for
``duration`` seconds. Each conversation is two queues; every message is SENT by
the queue's writer over one of its sessions, pushed (MSG) to the reader when it
is online and subscribed, one at a time, and ACKed. Messages, replies and
receipts are drawn from the same rates in both modes:

- ``correlated``: one client per person. A person's session carries all its
  queues: on connecting it SUBs all of them at the same instant (1 ms apart)
  and they all close together; each ACK of a message is followed within 0.1 s
  by a delivery receipt (a SEND on the reverse queue), and sometimes by a human
  reply within 60 s. Every timing signal has something to find.
- ``independent``: every queue's reading side and writing side are separate
  clients with their own sessions, and each receipt or reply goes out at an
  independent random time. No timing signal can beat chance (AUC 0.5).

Receipts are not themselves receipted (that would never end). Seeded: the same
arguments give the same trace.
"""

from __future__ import annotations

import bisect
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onionpost.lab.relayview import RelayView, load

MODES = ("correlated", "independent")
# Time a client needs after a push to have ACKed and sent its receipt: a push is
# only scheduled if the session stays open at least this long afterwards.
_MARGIN = 1.0
_RELAY_SESSION = 0  # the other relay's session, for forwarded SENDs


@dataclass(slots=True)
class SyntheticTrace:
    """Trace events (time order) and the truth, as ``relayview.load`` takes them."""

    events: list[dict[str, Any]]
    truth: dict[str, Any]
    mode: str
    seed: int

    def view(self) -> RelayView:
        return load(self.events, self.truth)

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``trace.jsonl`` and ``truth.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        trace, truth = directory / "trace.jsonl", directory / "truth.json"
        trace.write_text("".join(json.dumps(e) + "\n" for e in self.events), encoding="utf-8")
        truth.write_text(json.dumps(self.truth, indent=1) + "\n", encoding="utf-8")
        return trace, truth


@dataclass(slots=True)
class _Session:
    sid: int
    open: float
    sub: float  # when it has connected and SUBscribed: usable from here
    close: float  # may lie past the trace's end (then no close event)


@dataclass(slots=True)
class _Actor:
    """One client: its sessions, and the queues it reads."""

    sessions: list[_Session] = field(default_factory=list)
    closes: list[float] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)

    def usable(self, t: float, margin: float = _MARGIN) -> tuple[_Session, float] | None:
        """The first session usable at or after ``t`` for ``margin`` seconds, and when."""
        k = bisect.bisect_right(self.closes, t + margin)
        for s in self.sessions[k:]:
            at = max(t, s.sub)
            if at + margin < s.close:
                return s, at
        return None

    def online(self, t: float) -> _Session | None:
        """The session this client can send over at ``t``, if any."""
        found = self.usable(t, margin=0.0)
        return found[0] if found is not None and found[1] == t else None


def _contact_graph(n: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A k-regular graph on n people (circulant over a random order)."""
    if not 0 < k < n:
        raise ValueError(f"contacts must be between 1 and n_people - 1, got {k} for {n} people")
    if k % 2 and n % 2:
        raise ValueError("an odd number of contacts needs an even number of people")
    order = rng.permutation(n).tolist()
    edges = [(order[i], order[(i + d) % n]) for d in range(1, k // 2 + 1) for i in range(n)]
    if k % 2:
        edges += [(order[i], order[i + n // 2]) for i in range(n // 2)]
    return edges


def generate(n_people: int = 20, contacts: int = 2, *, mode: str = "correlated", seed: int = 0,
             duration: float = 3600.0, start: float = 1_700_000_000.0, mean_online: float = 600.0,
             mean_offline: float = 300.0, message_rate: float = 1 / 300, reply_probability: float = 0.3,
             forward_fraction: float = 0.0) -> SyntheticTrace:
    """A seeded synthetic trace and its truth (see the module docstring).

    ``message_rate`` is per queue, per second its writer is online;
    ``forward_fraction`` of the SENDs reach the relay forwarded by another relay.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    edges = _contact_graph(n_people, contacts, rng)
    people = [f"user{p}" for p in range(n_people)]

    # Queues: conversation c has queue 2c (read by a, written by b) and 2c+1 (the reverse).
    readers: list[int] = []
    writers: list[int] = []
    truth_rows = []
    for c, (a, b) in enumerate(edges):
        for reader, writer in ((a, b), (b, a)):
            q = len(readers)
            readers.append(reader)
            writers.append(writer)
            truth_rows.append({"name": f"q{q}", "rid": rng.bytes(12).hex(), "snd": rng.bytes(12).hex(),
                               "reader": people[reader], "writer": people[writer], "conversation": f"c{c}"})
    n_queues = len(readers)

    def reverse(q: int) -> int:
        return q ^ 1

    # Actors: who holds the sessions that read and write each queue.
    if mode == "correlated":
        actors = [_Actor() for _ in range(n_people)]
        read_actor = list(readers)
        write_actor = list(writers)
    else:
        actors = [_Actor() for _ in range(2 * n_queues)]
        read_actor = list(range(n_queues))
        write_actor = [n_queues + q for q in range(n_queues)]
    for q in range(n_queues):
        actors[read_actor[q]].reads.append(q)

    out: list[tuple[float, int, dict[str, Any]]] = []

    def emit(t: float, event: dict[str, Any]) -> None:
        out.append((t, len(out), {"t": start + t, **event}))

    for row in truth_rows:
        emit(0.0, {"ev": "ids", "rid": row["rid"], "snd": row["snd"]})
    if forward_fraction > 0:
        emit(0.0, {"ev": "open", "session": _RELAY_SESSION})

    sid = _RELAY_SESSION
    p_online = mean_online / (mean_online + mean_offline)
    for actor in actors:
        t = 0.0
        online = rng.random() < p_online
        while t < duration:
            if online:
                sid += 1
                length = rng.exponential(mean_online)
                sub = t + rng.uniform(0.02, 0.2)
                session = _Session(sid, t, sub, t + length)
                actor.sessions.append(session)
                actor.closes.append(session.close)
                emit(t, {"ev": "open", "session": sid})
                for k, q in enumerate(actor.reads):
                    emit(sub + 0.001 * k, {"ev": "cmd", "session": sid, "cmd": "SUB",
                                           "queue": truth_rows[q]["rid"], "via": "direct"})
                if session.close < duration:
                    emit(session.close, {"ev": "close", "session": sid})
                t += length
            else:
                t += rng.exponential(mean_offline)
            online = not online

    # Messages, in time order: (time, tie-break, queue, kind) with kind
    # "message", "reply" or "receipt".
    pending: list[tuple[float, int, int, str]] = []
    counter = 0
    for q in range(n_queues):
        writer = actors[write_actor[q]]
        n = rng.poisson(message_rate * duration)
        for t in np.sort(rng.uniform(0, duration, n)).tolist():
            if writer.online(t) is not None:
                counter += 1
                pending.append((t, counter, q, "message"))
    heapq.heapify(pending)
    last_ack = [0.0] * n_queues

    def unrelated_time(actor: _Actor) -> float | None:
        """In the independent mode, a time this client can send at, drawn
        uniformly over its online time (rejection sampling), unrelated to the ACK."""
        for t in rng.uniform(0, duration, 64).tolist():
            if actor.online(t) is not None:
                return t
        return None

    while pending:
        t, _, q, kind = heapq.heappop(pending)
        if t >= duration:
            continue
        writer = actors[write_actor[q]]
        session = writer.online(t)
        if session is None:
            continue
        snd = truth_rows[q]["snd"]
        if rng.random() < forward_fraction:
            arrival = t + rng.uniform(0.05, 0.3)
            emit(arrival, {"ev": "cmd", "session": _RELAY_SESSION, "cmd": "SEND", "queue": snd, "via": "forward"})
        else:
            arrival = t
            emit(t, {"ev": "cmd", "session": session.sid, "cmd": "SEND", "queue": snd, "via": "direct"})
        # One message in flight per queue: the push waits for the previous ACK.
        reader = actors[read_actor[q]]
        found = reader.usable(max(arrival, last_ack[q]) + rng.uniform(0.005, 0.03))
        if found is None:
            continue
        rsession, push = found
        if push >= duration:
            continue
        ack = push + rng.uniform(0.02, 0.3)
        last_ack[q] = ack
        rid = truth_rows[q]["rid"]
        emit(push, {"ev": "msg", "session": rsession.sid, "queue": rid})
        emit(ack, {"ev": "cmd", "session": rsession.sid, "cmd": "ACK", "queue": rid, "via": "direct"})
        if kind == "receipt":
            continue
        back = actors[write_actor[reverse(q)]]
        if mode == "correlated":
            receipt: float | None = ack + rng.uniform(0.005, 0.1)
            reply: float | None = ack + rng.uniform(2.0, 50.0)
        else:
            receipt, reply = unrelated_time(back), unrelated_time(back)
        if receipt is not None:
            counter += 1
            heapq.heappush(pending, (receipt, counter, reverse(q), "receipt"))
        if kind == "message" and reply is not None and rng.random() < reply_probability:
            counter += 1
            heapq.heappush(pending, (reply, counter, reverse(q), "reply"))

    out.sort(key=lambda item: (item[0], item[1]))
    events = [e for t, _, e in out if t <= duration]
    truth = {"queues": truth_rows, "people": people, "mode": mode, "seed": seed}
    return SyntheticTrace(events=events, truth=truth, mode=mode, seed=seed)
