"""Flow correlation: link a client's guard-link flow to the relay sessions it carries.

The attacker holds two views of the same traffic: a guard-link flow of one
client (``guardlink``: packet times and signed sizes) and the relay
operator's sessions (``relay_sessions``: each command in, each response and
pushed message out, one 16 KB block each). For every pair (flow, session) the
score says how much the two move together, in DeepCoFFEA's style:

1. Both are binned on one grid (``bin`` seconds) into four series: packets
   and bytes, each towards the relay (client to guard; commands in) and back.
2. Overlapping windows (``window`` long, every ``step``) cut both. In each
   window where the session is active, the Pearson correlation of the two
   concatenated count series and of the two byte series is taken, and their
   mean is the window's correlation.
3. Latency: the flow is shifted against the session by ``lag`` bins, the
   upstream series one way and the downstream the other (what the client
   sends reaches the relay later; what the relay sends reaches the client
   later), for every lag up to ``max_lag``; each pair keeps its best lag.
4. Vote: a window votes "same" if its correlation reaches ``threshold``. The
   score is the share of the session's active windows that vote, plus, to
   order pairs with the same vote, less than one vote's worth of the mean
   correlation.

Where DeepCoFFEA learns an embedding per window, this uses the raw binned
series; the windows, their overlap and the vote are the same idea. The
published attacks run on the exported ``inflow/``/``outflow/`` files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onionpost.lab import linkage
from onionpost.lab.guardlink import Flow
from onionpost.lab.relayview import Trace, read_trace, read_truth

BLOCK = 16384  # docs/protocol/relay.md: every block, either way, is 16384 bytes
NULL_SHIFTS = 16  # shifted copies of each flow that a pair's score is ranked against
Scores = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # registry.Scores
RECIPIENT_COMMANDS = frozenset({"NEW", "KEY", "SUB", "GET", "ACK", "OFF", "DEL"})


@dataclass(frozen=True, slots=True)
class Series:
    """Signed sizes over time: + towards the relay, - back. ``owner`` is the
    person it belongs to, where known; ``reads`` the queues (rids) a relay
    session carried for their reader."""

    name: str
    t: np.ndarray
    size: np.ndarray
    owner: str | None = None
    reads: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Params:
    bin: float = 0.5
    window: float = 30.0
    step: float = 10.0
    max_lag: float = 2.0
    threshold: float = 0.3

    def __post_init__(self) -> None:
        if not (self.bin > 0 and self.window >= 2 * self.bin and 0 < self.step <= self.window
                and self.max_lag >= 0 and -1 <= self.threshold <= 1):
            raise ValueError(f"flow parameters out of range: {self}")


def series_of_flow(flow: Flow, name: str | None = None, owner: str | None = None) -> Series:
    return Series(name or flow.header.get("flow", "flow"), flow.t, flow.size, owner)


def relay_sessions(trace: Trace,
                   truth: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                   *, block: int = BLOCK) -> list[Series]:
    """Every client session of a relay trace as a series of blocks.

    A session's open is the hello each way; every direct command is a block
    in and its response a block out (same instant); every pushed message is a
    block out. Forwarded SENDs come on another relay's session and are left
    out. With the truth, ``owner`` is who the session's commands belong to
    (the reader of the queues it SUBs, ACKs, ...; the writer of those it SENDs
    to); a session whose commands name two people gets None.
    """
    events = read_trace(trace)
    reader, writer = {}, {}
    for row in read_truth(truth) if truth is not None else []:
        reader[row["rid"]], writer[row["snd"]] = row["reader"], row["writer"]
    times: dict[int, list[tuple[float, int]]] = {}
    owners: dict[int, set[str]] = {}
    reads: dict[int, set[str]] = {}
    for e in events:
        if e["ev"] == "ids":
            continue
        session = e["session"]
        if e["ev"] == "open":
            times.setdefault(session, []).extend([(e["t"], block), (e["t"], -block)])
        elif e["ev"] == "msg":
            times.setdefault(session, []).append((e["t"], -block))
            reads.setdefault(session, set()).add(e["queue"])
            if e["queue"] in reader:
                owners.setdefault(session, set()).add(reader[e["queue"]])
        elif e["ev"] == "cmd" and e["via"] == "direct":
            times.setdefault(session, []).extend([(e["t"], block), (e["t"], -block)])
            queue = e["queue"]
            if queue is None:
                continue
            if e["cmd"] == "SEND":
                who = writer.get(queue)
            else:
                reads.setdefault(session, set()).add(queue)
                who = reader.get(queue)
            if who is not None:
                owners.setdefault(session, set()).add(who)
    out = []
    for session in sorted(times):
        rows = sorted(times[session])
        who = owners.get(session, set())
        out.append(Series(f"session{session}", np.asarray([t for t, _ in rows]), np.asarray([s for _, s in rows]),
                          next(iter(who)) if len(who) == 1 else None, frozenset(reads.get(session, ()))))
    return out


# -- binning and scoring ------------------------------------------------------------

def _binned(series: Sequence[Series], t0: float, n_bins: int, width: float) -> np.ndarray:
    """(len(series), 4, n_bins): packets up, packets down, bytes up, bytes down."""
    out = np.zeros((len(series), 4, n_bins))
    for k, s in enumerate(series):
        idx = np.floor((np.asarray(s.t, dtype=float) - t0) / width).astype(np.int64)
        inside = (idx >= 0) & (idx < n_bins)
        idx, size = idx[inside], np.asarray(s.size, dtype=float)[inside]
        up = size > 0
        out[k, 0] = np.bincount(idx[up], minlength=n_bins)
        out[k, 1] = np.bincount(idx[~up], minlength=n_bins)
        out[k, 2] = np.bincount(idx[up], weights=size[up], minlength=n_bins)
        out[k, 3] = np.bincount(idx[~up], weights=-size[~up], minlength=n_bins)
    return out


def _shift(x: np.ndarray, lag: int) -> np.ndarray:
    """x[..., i - lag] (zeros shifted in): the series as seen ``lag`` bins later."""
    if lag == 0:
        return x
    out = np.zeros_like(x)
    if lag > 0:
        out[..., lag:] = x[..., :-lag]
    else:
        out[..., :lag] = x[..., -lag:]
    return out


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (last axis) centred and scaled to unit norm; and whether each row varies."""
    centred = x - x.mean(axis=-1, keepdims=True)
    norm = np.sqrt((centred ** 2).sum(axis=-1, keepdims=True))
    varies = norm[..., 0] > 1e-12
    return np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 1e-12), varies


def _windows(x: np.ndarray, length: int, starts: np.ndarray) -> np.ndarray:
    """(n, 4, n_bins) -> (n, n_windows, 4, length)."""
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=-1)  # (n, 4, n_bins - length + 1, length)
    return np.moveaxis(view[:, :, starts, :], 2, 1)


@dataclass(slots=True)
class FlowScores:
    """``score[f, s]`` for flow f and session s, with what made it."""

    score: np.ndarray
    votes: np.ndarray
    active: np.ndarray  # per session: windows where it had traffic
    lag: np.ndarray  # best lag (seconds) per pair
    mean_corr: np.ndarray
    params: Params
    windows: int = 0
    flows: tuple[Series, ...] = field(default_factory=tuple)
    sessions: tuple[Series, ...] = field(default_factory=tuple)
    span: tuple[float, float] = (0.0, 0.0)

    def labels(self) -> np.ndarray:
        """True where flow and session belong to the same known person."""
        fo = np.asarray([f.owner for f in self.flows], dtype=object)
        so = np.asarray([s.owner for s in self.sessions], dtype=object)
        known = (fo[:, None] != None) & (so[None, :] != None)  # noqa: E711 - elementwise
        return known & (fo[:, None] == so[None, :])


def score(flows: Sequence[Series], sessions: Sequence[Series], params: Params = Params(), *,
          start: float | None = None, end: float | None = None) -> FlowScores:
    """Score every (flow, session) pair (see the module docstring).

    ``start``/``end`` bound the compared time (default: all the data).
    """
    flows, sessions = tuple(flows), tuple(sessions)
    every = [np.asarray(s.t, dtype=float) for s in (*flows, *sessions) if len(s.t)]
    if start is None:
        start = min((float(t.min()) for t in every), default=0.0)
    if end is None:
        end = max((float(t.max()) for t in every), default=start)
    length = int(round(params.window / params.bin))
    stride = max(1, int(round(params.step / params.bin)))
    max_lag = int(np.ceil(params.max_lag / params.bin))
    n_bins = max(int(np.ceil((end - start) / params.bin)) + 1, length)
    starts = np.arange(0, n_bins - length + 1, stride)
    if starts[-1] + length < n_bins:  # the tail gets a window too
        starts = np.append(starts, n_bins - length)
    nf, ns, nw = len(flows), len(sessions), len(starts)
    empty = np.zeros((nf, ns))
    if nf == 0 or ns == 0:
        return FlowScores(empty, empty, np.zeros(ns), empty, empty, params, nw, flows, sessions, (start, end))

    f_bins = _binned(flows, start, n_bins, params.bin)
    s_bins = _binned(sessions, start, n_bins, params.bin)
    s_win = _windows(s_bins, length, starts)  # (ns, nw, 4, L)
    active = s_win.sum(axis=(2, 3)) > 0  # (ns, nw)
    s_counts, s_ok_c = _standardised(s_win[:, :, 0:2].reshape(ns, nw, -1))
    s_bytes, s_ok_b = _standardised(s_win[:, :, 2:4].reshape(ns, nw, -1))

    best_corr = np.full((nf, ns), -np.inf)
    best = {"votes": empty.copy(), "mean": empty.copy(), "lag": empty.copy()}
    n_active = active.sum(axis=1)
    for lag in range(-max_lag, max_lag + 1):
        shifted = f_bins.copy()
        # Upstream: the client sends, the relay sees it lag bins later. Downstream: the reverse.
        shifted[:, 0::2] = _shift(f_bins[:, 0::2], lag)
        shifted[:, 1::2] = _shift(f_bins[:, 1::2], -lag)
        f_win = _windows(shifted, length, starts)
        f_counts, _ = _standardised(f_win[:, :, 0:2].reshape(nf, nw, -1))
        f_bytes, _ = _standardised(f_win[:, :, 2:4].reshape(nf, nw, -1))
        corr_c = np.einsum("fwl,swl->fsw", f_counts, s_counts)
        corr_b = np.einsum("fwl,swl->fsw", f_bytes, s_bytes)
        # A session window with no variation in one measure is judged on the other.
        weight_c, weight_b = s_ok_c[None].astype(float), s_ok_b[None].astype(float)
        corr = np.divide(corr_c * weight_c + corr_b * weight_b, weight_c + weight_b,
                         out=np.zeros_like(corr_c), where=(weight_c + weight_b) > 0)
        corr = np.where(active[None], corr, 0.0)
        mean = np.divide(corr.sum(axis=2), n_active[None], out=np.zeros((nf, ns)), where=n_active[None] > 0)
        votes = ((corr >= params.threshold) & active[None]).sum(axis=2)
        better = mean > best_corr
        best_corr = np.where(better, mean, best_corr)
        best["votes"] = np.where(better, votes, best["votes"])
        best["mean"] = np.where(better, mean, best["mean"])
        best["lag"] = np.where(better, lag * params.bin, best["lag"])
    share = np.divide(best["votes"], n_active[None], out=np.zeros((nf, ns)), where=n_active[None] > 0)
    # Less than one vote's worth: (mean + 1) / 2 is in [0, 1].
    tiebreak = np.where(n_active[None] > 0, (best["mean"] + 1) / 2 / (n_active[None] + 1), 0.0)
    return FlowScores(share + tiebreak, best["votes"], n_active, best["lag"], best["mean"], params, nw,
                      flows, sessions, (start, end))


def evaluate(flows: Sequence[Series], sessions: Sequence[Series], params: Params = Params(), **bounds) -> dict:
    """Score every pair and measure: is this session this flow's owner's?

    Only pairs whose flow and session both have a known owner count.
    Returns ``{"flows", "sessions", "pairs", "params", "metrics"}`` where
    ``metrics`` holds ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``, ...
    """
    scored = score(flows, sessions, params, **bounds)
    known_f = np.asarray([f.owner is not None for f in scored.flows], dtype=bool)
    known_s = np.asarray([s.owner is not None and scored.active[k] > 0 for k, s in enumerate(scored.sessions)],
                         dtype=bool)
    mask = known_f[:, None] & known_s[None, :]
    labels = scored.labels()[mask]
    return {
        "flows": int(known_f.sum()), "sessions": int(known_s.sum()), "windows": scored.windows,
        "pairs": {"total": int(mask.sum()), "positive": int(labels.sum()), "negative": int((~labels).sum())},
        "params": {"bin": params.bin, "window": params.window, "step": params.step,
                   "max_lag": params.max_lag, "threshold": params.threshold},
        "metrics": linkage.roc_metrics(labels, scored.score[mask]),
    }


# -- both vantage points together -----------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (ties share their rank)."""
    if len(x) == 0:
        return x.astype(float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / max(len(x) - 1, 1)


def _rolled(flow: Series, shift: float, start: float, end: float) -> Series:
    """The flow moved ``shift`` seconds later, wrapped around the span [start, end)."""
    t = start + (np.asarray(flow.t, dtype=float) - start + shift) % max(end - start, 1e-9)
    order = np.argsort(t, kind="stable")
    return Series(flow.name, t[order], np.asarray(flow.size)[order], flow.owner)


def null_ranks(scored: FlowScores, shifts: int = NULL_SHIFTS) -> np.ndarray:
    """``R[f, s]`` in [0, 1]: the share of ``shifts`` scores of the same pair, with
    the flow moved by whole windows in time (wrapped), that the true score beats.

    A session with few active windows and one with many get scores of
    different scales; against its own shifted copies each pair is on one
    scale, and this needs no other flow (a single observer of one person).
    """
    start, end = scored.span
    span = end - start
    params = scored.params
    if shifts <= 0 or span <= 2 * params.window or not len(scored.flows):
        return np.zeros_like(scored.score)
    beats = np.zeros_like(scored.score)
    for k in range(1, shifts + 1):
        # Spread over the span, never closer than a window (and its lags) to the truth.
        shift = params.window + params.max_lag + (span - 2 * (params.window + params.max_lag)) * (k - 0.5) / shifts
        moved = [_rolled(f, shift, start, end) for f in scored.flows]
        null = score(moved, scored.sessions, params, start=start, end=end).score
        beats += scored.score > null
    return beats / shifts


def flow_ties(scored: FlowScores, shifts: int = NULL_SHIFTS) -> np.ndarray:
    """``T[f, s]`` in [0, 1]: the pair's score made comparable across sessions
    (vote shares of sessions with few or many active windows are not).

    With two flows or more: flow f's rank among all flows for session s (1:
    the session's best match). With one flow (an observer of one person):
    ``null_ranks``, ties broken by the session's rank among all sessions.
    Inactive sessions get 0.
    """
    ties = np.zeros_like(scored.score)
    active = np.flatnonzero(scored.active > 0)
    if len(scored.flows) >= 2:
        for s in active:
            ties[:, s] = _ranks(scored.score[:, s])
    elif len(scored.flows) == 1 and len(active):
        null = null_ranks(scored, shifts)[0, active]
        ties[0, active] = (null * shifts + _ranks(scored.score[0, active])) / (shifts + 1)
    return ties


def queue_flow_scores(pr: linkage.Pairs, scored: FlowScores, shifts: int = NULL_SHIFTS) -> np.ndarray:
    """``Q[q, f]``: how strongly queue ``pr.queues[q]`` ties to flow f: the best
    ``flow_ties`` value over the sessions that carried it for its reader."""
    q_of = {q.rid: k for k, q in enumerate(pr.queues) if q.rid is not None}
    out = np.zeros((len(pr.queues), len(scored.flows)))
    ties = flow_ties(scored, shifts)
    for s in np.flatnonzero(scored.active > 0):
        for rid in scored.sessions[s].reads:
            if rid in q_of:
                out[q_of[rid]] = np.maximum(out[q_of[rid]], ties[:, s])
    return out


def evaluate_together(pr: linkage.Pairs, scored: FlowScores, link_scores: np.ndarray,
                      watched: Iterable[str] | None = None) -> dict:
    """Link two queues of one person with a guard observer beside the relay operator.

    ``pr`` are the relay's queue pairs (``linkage.pairs``) and ``link_scores``
    one relay-side signal aligned with them; ``scored`` holds the guard flows
    of the ``watched`` people (default: every flow's owner). Only pairs with a
    queue read by a watched person count: the question is whether the other
    queue is theirs too. The flow's pair score is the best, over watched
    flows, of the weaker tie of the two queues to that flow; "together" is
    the mean of the two scores' ranks. Returns the metrics of relay alone,
    flow alone and together on the same pairs.
    """
    labels, relay, flow, together, watched = together_scores(pr, scored, link_scores, watched)
    return {
        "watched": sorted(watched),
        "pairs": {"total": len(labels), "positive": int(labels.sum()), "negative": int((~labels).sum())},
        "relay": linkage.roc_metrics(labels, relay),
        "flow": linkage.roc_metrics(labels, flow),
        "together": linkage.roc_metrics(labels, together),
    }


def together_scores(pr: linkage.Pairs, scored: FlowScores, link_scores: np.ndarray,
                    watched: Iterable[str] | None = None):
    """``evaluate_together``'s pairs: (labels, relay score, flow score, together score, watched people)."""
    watched = set(watched if watched is not None else (f.owner for f in scored.flows if f.owner is not None))
    keep_flows = np.asarray([f.owner in watched for f in scored.flows], dtype=bool)
    q_scores = queue_flow_scores(pr, scored)[:, keep_flows]
    readers = np.asarray([q.reader in watched for q in pr.queues], dtype=bool)
    mask = readers[pr.i] | readers[pr.j]
    if q_scores.shape[1]:
        flow_pair = np.minimum(q_scores[pr.i], q_scores[pr.j]).max(axis=1)
    else:
        flow_pair = np.zeros(len(pr))
    labels = pr.same_person[mask]
    relay, flow = np.asarray(link_scores, dtype=float)[mask], flow_pair[mask]
    together = (_ranks(relay) + _ranks(flow)) / 2
    return labels, relay, flow, together, watched


def format_table(flow: dict | None = None, together: dict | None = None) -> str:
    """A plain-text table of ``evaluate``'s and/or ``evaluate_together``'s results."""

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    rows = [("attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "pairs (pos/neg)")]

    def add(name: str, m: dict) -> None:
        rows.append((name, num(m["auc"]), num(m["tpr_at_1pct_fpr"]), num(m["tpr_at_0.1pct_fpr"]),
                     f"{m['positive']}/{m['negative']}"))

    if flow is not None:
        add("flow -> session (same person)", flow["metrics"])
    if together is not None:
        for part in ("relay", "flow", "together"):
            add(f"queue pair same person: {part}", together[part])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append(" | ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c])
                                for c in range(len(r))).rstrip())
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the lab's attacks (registry.Attack) -----------------------------------------------

def run_flows(run_dir: Path, relay: str = "relay0") -> tuple[FlowScores, dict]:
    """Score one run's guard flows against ``relay``'s sessions over the observed interval.

    FileNotFoundError if the run has no guard capture (the report says "not captured").
    """
    from onionpost.lab.guardlink import GUARD_DIR, guard_flow_paths, read_flow

    paths = guard_flow_paths(run_dir)
    if not paths:
        raise FileNotFoundError(2, "no guard-link capture in this run", str(Path(run_dir) / GUARD_DIR))
    run = json.loads((Path(run_dir) / "run.json").read_text())
    flows = [series_of_flow(read_flow(p), name=p.stem, owner=p.stem) for p in paths]
    sessions = relay_sessions(Path(run_dir) / f"{relay}.jsonl", Path(run_dir) / "queues.json")
    return score(flows, sessions, start=run["observed_from"], end=run["observed_until"]), run


def guard_flow(run_dir: Path) -> Scores:
    """Each watched user's guard flow against every session of relay0: is it theirs?

    Pairs count where both owners are known and the session was active; signals:
    ``vote`` (the windowed vote) and ``rank`` (``flow_ties``: comparable across sessions).
    """
    scored, _ = run_flows(run_dir)
    known_f = np.asarray([f.owner is not None for f in scored.flows], dtype=bool)
    known_s = np.asarray([s.owner is not None and scored.active[k] > 0 for k, s in enumerate(scored.sessions)],
                         dtype=bool)
    mask = known_f[:, None] & known_s[None, :]
    labels = scored.labels()[mask]
    return {"vote": {"same_person": (labels, scored.score[mask])},
            "rank": {"same_person": (labels, flow_ties(scored)[mask])}}


def guard_and_relay(run_dir: Path) -> Scores:
    """Two queues of one person, with a guard observer beside relay0's operator (``evaluate_together``).

    Signals: ``flow`` alone, and each relay-side linkage signal combined with it (``<signal>+flow``).
    """
    from onionpost.lab import registry

    scored, _ = run_flows(run_dir)
    pr = registry.relay_pairs(Path(run_dir), ["relay0"])
    out: Scores = {}
    for name, link in linkage.score_all(pr).items():
        labels, _, flow, together, _ = together_scores(pr, scored, link)
        out.setdefault("flow", {"same_person": (labels, flow)})
        out[f"{name}+flow"] = {"same_person": (labels, together)}
    return out


def register(registry) -> None:
    registry.register_attack(registry.Attack(
        "guard-flow", "guard", guard_flow,
        "windowed cross-correlation of each user's guard-link flow with relay0's sessions (same person?)"))
    registry.register_attack(registry.Attack(
        "guard+relay", "guard+relay", guard_and_relay,
        "two queues of one person: relay-side linkage signals combined with the guard flow's ties"))
