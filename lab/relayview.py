"""What a relay operator sees, per queue: the input of the linkage scores.

A relay trace (JSON Lines, one event a line; the contract is in ``load``'s
docstring) is folded into a ``RelayView``: for every queue the times of its
SUBs, ACKs, SENDs (with how each arrived), MSG pushes, and the open intervals
and close times of the client sessions that carried it. A queue's two ids are
joined the way the relay itself can join them (its ``ids`` events, written
when NEW created the queue) and, for queues created before the trace began,
through the ground truth, which also says who reads and who writes each queue.

Everything the scores need is here as sorted numpy arrays, so ``linkage`` never
walks events in Python. A malformed trace is refused with the line number of
the first bad line: a measurement over a half-read trace would look like a
result.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EVENTS = frozenset({"open", "close", "cmd", "msg", "ids"})
COMMANDS = frozenset({"NEW", "KEY", "SUB", "GET", "ACK", "OFF", "DEL", "SEND", "PING", "FWD", "RFWD"})
# Commands that name a queue of this relay. PING names none; FWD and RFWD are
# envelopes (the SEND inside an RFWD is logged as its own "cmd" with via=forward).
QUEUE_COMMANDS = frozenset({"NEW", "KEY", "SUB", "GET", "ACK", "OFF", "DEL", "SEND"})
VIAS = frozenset({"direct", "forward"})
TRUTH_FIELDS = ("name", "rid", "snd", "reader", "writer", "conversation")
_HEX = re.compile(r"[0-9a-fA-F]+")


class TraceError(ValueError):
    """A trace line that does not follow the contract; ``line`` is 1-based."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"trace line {line}: {problem}")
        self.line = line
        self.problem = problem


class TruthError(ValueError):
    """Ground truth that is malformed or contradicts the trace's ``ids`` events."""


@dataclass(frozen=True, slots=True)
class SessionSpan:
    """One client (or relay) session: ``close`` is None if the trace ends first.

    ``open`` is the trace's first instant when its open event is not in the
    trace (the session was already open when recording began).
    """

    session: int
    open: float
    close: float | None


@dataclass(slots=True)
class QueueActivity:
    """Everything the relay saw of one queue, times in unix seconds, sorted.

    ``key`` is the rid, or the snd for a queue that was only ever written to
    and whose rid the relay cannot join. ``name``, ``reader``, ``writer`` and
    ``conversation`` come from the truth (None without it).
    """

    key: str
    rid: str | None
    snd: str | None
    name: str | None = None
    reader: str | None = None
    writer: str | None = None
    conversation: str | None = None
    commands: dict[str, np.ndarray] = field(default_factory=dict)
    send_forwarded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    msgs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sessions: tuple[int, ...] = ()
    read_sessions: tuple[int, ...] = ()
    """Sessions that carried the queue's reader commands (every queue command but SEND)."""
    intervals: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Union of the open time of every session that carried the queue (reader's and writers')."""
    read_intervals: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """The same over ``read_sessions`` only: when its reader was online on it."""
    write_intervals: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """The same over the sessions that carried only its direct SENDs: when a writer was online on it."""
    closes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def times(self, command: str) -> np.ndarray:
        """Sorted times of one command on this queue (empty if none)."""
        return self.commands.get(command, np.zeros(0))

    @property
    def subs(self) -> np.ndarray:
        return self.times("SUB")

    @property
    def acks(self) -> np.ndarray:
        return self.times("ACK")

    @property
    def sends(self) -> np.ndarray:
        """All SENDs, direct and forwarded; ``send_forwarded`` is aligned with it."""
        return self.times("SEND")


@dataclass(slots=True)
class RelayView:
    """A trace folded per queue. ``queues`` is keyed by ``QueueActivity.key``."""

    queues: dict[str, QueueActivity]
    sessions: dict[int, SessionSpan]
    start: float
    end: float
    events: int

    def queue(self, ident: str) -> QueueActivity:
        """The queue with this truth name, rid or snd."""
        lowered = ident.lower()
        for q in self.queues.values():
            if q.name == ident or lowered in (q.rid, q.snd):
                return q
        raise KeyError(ident)

    def labelled(self) -> list[QueueActivity]:
        """The queues the truth describes (reader and writer known), by name."""
        known = [q for q in self.queues.values() if q.reader is not None and q.writer is not None]
        return sorted(known, key=lambda q: (q.name or "", q.key))


def _fail(line: int, problem: str) -> TraceError:
    return TraceError(line, problem)


def _hex(value: Any, line: int, what: str) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise _fail(line, f"{what} must be a hex string, got {value!r}")
    return value.lower()


def _check_event(raw: Any, line: int) -> dict[str, Any]:
    """Validate one decoded event against the contract; return it normalised."""
    if not isinstance(raw, Mapping):
        raise _fail(line, f"an event must be a JSON object, got {type(raw).__name__}")
    t = raw.get("t")
    # bool is an int subclass: true/false are not times or session numbers.
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise _fail(line, f"'t' must be a finite number of seconds, got {t!r}")
    ev = raw.get("ev")
    if ev not in EVENTS:
        raise _fail(line, f"'ev' must be one of {sorted(EVENTS)}, got {ev!r}")
    out: dict[str, Any] = {"t": float(t), "ev": ev}
    if ev == "ids":
        out["rid"] = _hex(raw.get("rid"), line, "'rid'")
        out["snd"] = _hex(raw.get("snd"), line, "'snd'")
        return out
    session = raw.get("session")
    if isinstance(session, bool) or not isinstance(session, int):
        raise _fail(line, f"'session' must be an integer, got {session!r}")
    out["session"] = session
    if ev == "cmd":
        cmd = raw.get("cmd")
        if cmd not in COMMANDS:
            raise _fail(line, f"'cmd' must be one of {sorted(COMMANDS)}, got {cmd!r}")
        via = raw.get("via")
        if via not in VIAS:
            raise _fail(line, f"'via' must be 'direct' or 'forward', got {via!r}")
        if via == "forward" and cmd != "SEND":
            raise _fail(line, f"only a SEND arrives forwarded, got {cmd} via forward")
        if "queue" not in raw:
            raise _fail(line, "a 'cmd' event needs 'queue' (hex or null)")
        queue = raw["queue"]
        out.update(cmd=cmd, via=via, queue=None if queue is None else _hex(queue, line, "'queue'"))
    elif ev == "msg":
        out["queue"] = _hex(raw.get("queue"), line, "'queue'")
    return out


Trace = str | os.PathLike[str] | Iterable[Mapping[str, Any] | str | bytes]


def read_trace(trace: Trace) -> list[dict[str, Any]]:
    """The validated events of a trace: a path to a JSON Lines file, or an
    iterable of events (dicts, or JSON strings); blank lines are skipped.

    Raises:
        TraceError: naming the 1-based line (or item) number of the first bad one.
    """
    return [e for _, e in _numbered(trace)]


def _numbered(trace: Trace) -> list[tuple[int, dict[str, Any]]]:
    if isinstance(trace, (str, os.PathLike)):
        with open(trace, encoding="utf-8") as fh:
            return _numbered(list(fh))
    events = []
    for line, item in enumerate(trace, start=1):
        if isinstance(item, (str, bytes)):
            if not item.strip():
                continue
            try:
                item = json.loads(item)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise _fail(line, f"not JSON ({exc})") from None
        events.append((line, _check_event(item, line)))
    return events


def read_truth(truth: str | os.PathLike[str] | Mapping[str, Any]) -> list[dict[str, str | None]]:
    """The truth's queues, checked: each has name, rid, snd, reader, writer (conversation optional)."""
    if isinstance(truth, (str, os.PathLike)):
        truth = json.loads(Path(truth).read_text(encoding="utf-8"))
    if not isinstance(truth, Mapping) or not isinstance(truth.get("queues"), list):
        raise TruthError("truth must be a JSON object with a 'queues' list")
    queues = []
    seen: dict[str, str] = {}
    for i, q in enumerate(truth["queues"]):
        if not isinstance(q, Mapping):
            raise TruthError(f"truth queue #{i} is not an object")
        row: dict[str, str | None] = {}
        for name in TRUTH_FIELDS:
            value = q.get(name)
            if value is None and name == "conversation":
                row[name] = None
                continue
            if not isinstance(value, str) or not value:
                raise TruthError(f"truth queue #{i}: {name!r} must be a non-empty string, got {value!r}")
            if name in ("rid", "snd"):
                if not _HEX.fullmatch(value):
                    raise TruthError(f"truth queue #{i}: {name!r} must be hex, got {value!r}")
                value = value.lower()
            row[name] = value
        for name in ("name", "rid", "snd"):
            key = f"{name}:{row[name]}" if name == "name" else f"id:{row[name]}"
            if key in seen:
                raise TruthError(f"truth queue #{i}: {name} {row[name]!r} repeats {seen[key]}")
            seen[key] = f"truth queue #{i}"
        queues.append(row)
    return queues


def _merge(intervals: list[tuple[float, float]]) -> np.ndarray:
    """Union of closed intervals as sorted, disjoint rows (start, end)."""
    if not intervals:
        return np.zeros((0, 2))
    merged: list[list[float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return np.asarray(merged, dtype=float)


def load(trace: Trace,
         truth: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> RelayView:
    """Fold a relay trace (and optional ground truth) into a ``RelayView``.

    The trace contract, one JSON object a line:

    - ``{"t", "ev": "open"|"close", "session"}``: a client session began / ended;
    - ``{"t", "ev": "cmd", "session", "cmd", "queue", "via"}``: a command as the
      relay received it; ``queue`` is a rid, or the snd for SEND; a SEND with
      ``via: "forward"`` came inside another relay's RFWD, on that relay's session;
    - ``{"t", "ev": "msg", "session", "queue"}``: a message pushed to a subscriber (rid);
    - ``{"t", "ev": "ids", "rid", "snd"}``: NEW created a queue with these ids.

    Lines may come in any time order (every time list is sorted here). A
    session carries a queue if a *direct* command naming that queue came over
    it: a forwarded SEND arrives on a relay-to-relay session that belongs to no
    client, so it counts as a SEND of the queue but not as its session.

    Raises:
        TraceError: a malformed line, a session opened or closed twice, closed
            before it opened, or a rid given two different snds.
        TruthError: malformed truth, or truth whose rid/snd disagree with ``ids``.
    """
    events = _numbered(trace)
    truth_rows = read_truth(truth) if truth is not None else []

    # Pass 1: who is who. rid <-> snd from ids events first, then the truth.
    snd_of: dict[str, str] = {}
    rid_of: dict[str, str] = {}
    for line, e in events:
        if e["ev"] != "ids":
            continue
        rid, snd = e["rid"], e["snd"]
        if snd_of.get(rid, snd) != snd or rid_of.get(snd, rid) != rid:
            raise _fail(line, f"ids rid {rid} / snd {snd} contradict an earlier ids event")
        snd_of[rid], rid_of[snd] = snd, rid
    for row in truth_rows:
        rid, snd = row["rid"], row["snd"]
        if snd_of.get(rid, snd) != snd or rid_of.get(snd, rid) != rid:
            raise TruthError(f"truth queue {row['name']!r}: rid {rid} / snd {snd} disagree with the trace's ids events")
        snd_of[rid], rid_of[snd] = snd, rid

    start = min((e["t"] for _, e in events), default=0.0)
    end = max((e["t"] for _, e in events), default=0.0)

    # Pass 2: sessions, then per-queue times.
    opened: dict[int, float] = {}
    closed: dict[int, float] = {}
    seen_sessions: set[int] = set()
    cmd_times: dict[str, dict[str, list[float]]] = {}
    forwarded: dict[str, list[tuple[float, bool]]] = {}
    msgs: dict[str, list[float]] = {}
    carried: dict[str, set[int]] = {}
    read_in: dict[str, set[int]] = {}

    # A SEND names the snd: it is filed under the queue's rid when the two are
    # joined, else under the snd itself (a queue the relay cannot join).
    unjoined_snds: set[str] = set()

    def key_of(ident: str, cmd: str) -> str:
        if cmd != "SEND":
            return ident
        if ident in rid_of:
            return rid_of[ident]
        unjoined_snds.add(ident)
        return ident

    for line, e in events:
        ev = e["ev"]
        if ev == "ids":
            cmd_times.setdefault(e["rid"], {})
            continue
        session = e["session"]
        seen_sessions.add(session)
        if ev == "open":
            if session in opened:
                raise _fail(line, f"session {session} opened twice")
            if session in closed and closed[session] < e["t"]:
                raise _fail(line, f"session {session} opened after it closed")
            opened[session] = e["t"]
        elif ev == "close":
            if session in closed:
                raise _fail(line, f"session {session} closed twice")
            if session in opened and e["t"] < opened[session]:
                raise _fail(line, f"session {session} closed before it opened")
            closed[session] = e["t"]
        elif ev == "msg":
            key = e["queue"]
            cmd_times.setdefault(key, {})
            msgs.setdefault(key, []).append(e["t"])
        elif e["cmd"] in QUEUE_COMMANDS and e["queue"] is not None:
            key = key_of(e["queue"], e["cmd"])
            cmd_times.setdefault(key, {}).setdefault(e["cmd"], []).append(e["t"])
            if e["cmd"] == "SEND":
                forwarded.setdefault(key, []).append((e["t"], e["via"] == "forward"))
            if e["via"] == "direct":
                carried.setdefault(key, set()).add(session)
                if e["cmd"] != "SEND":
                    read_in.setdefault(key, set()).add(session)

    sessions = {
        s: SessionSpan(s, opened.get(s, start), closed.get(s))
        for s in sorted(seen_sessions)
    }
    truth_by_rid = {row["rid"]: row for row in truth_rows}
    for rid in truth_by_rid:
        cmd_times.setdefault(rid, {})

    queues: dict[str, QueueActivity] = {}
    for key in sorted(cmd_times):
        joined = key in snd_of
        rid = None if key in unjoined_snds and not joined else key
        snd = snd_of.get(key) if rid is not None else key
        row = truth_by_rid.get(key, {})
        sends = sorted(forwarded.get(key, []))
        spans = [sessions[s] for s in sorted(carried.get(key, ()))]
        reading = read_in.get(key, set())
        open_time = [(sp.open, end if sp.close is None else sp.close) for sp in spans]
        queues[key] = QueueActivity(
            key=key, rid=rid, snd=snd,
            name=row.get("name"), reader=row.get("reader"), writer=row.get("writer"),
            conversation=row.get("conversation"),
            commands={c: np.sort(np.asarray(ts, dtype=float)) for c, ts in cmd_times[key].items()},
            send_forwarded=np.asarray([f for _, f in sends], dtype=bool),
            msgs=np.sort(np.asarray(msgs.get(key, []), dtype=float)),
            sessions=tuple(sp.session for sp in spans),
            read_sessions=tuple(sorted(reading)),
            intervals=_merge(open_time),
            read_intervals=_merge([t for sp, t in zip(spans, open_time) if sp.session in reading]),
            write_intervals=_merge([t for sp, t in zip(spans, open_time) if sp.session not in reading]),
            closes=np.sort(np.asarray([sp.close for sp in spans if sp.close is not None], dtype=float)),
        )
    return RelayView(queues=queues, sessions=sessions, start=start, end=end, events=len(events))
