"""How well a relay operator links queues by timing alone: per-pair scores, ROC.

Every unordered pair of the queues the truth describes is a candidate link,
asked two questions:

- **same person**: both queues have the same reader;
- **same conversation**: they are the two directions of one conversation (one
  queue's reader is the other's writer and the other way round).

Each *signal* scores every pair from the relay's view alone (higher = more
likely linked; a pair a signal has no data for scores 0):

- ``co_subscription``: the share of the two queues' SUBs that have a SUB of the
  other queue within ``delta`` (0.1 s): the attack as measured, "SUBs within 0.1 s";
- ``co_subscription_window``: only the smallest gap between any SUB of one and
  any SUB of the other, as ``1 / (1 + gap / delta)``: a stronger attacker who
  needs one coincidence, not a habit;
- ``co_closing`` / ``co_closing_window``: the same over the close times of the
  sessions that carried each queue;
- ``co_session``: Jaccard overlap of the sets of sessions in which each queue
  was read (SUB, ACK, GET...): socket-level linkage, what per-queue links and
  circuits defeat and ``--isolation shared`` gives away;
- ``online_overlap``: Jaccard overlap of the time each queue was carried by an
  open session;
- ``reader_overlap``: the same over the sessions that read each queue only
  (SUB, ACK, GET...): when each queue's reader was online on it;
- ``read_write_overlap``: the share of one queue's writing time (sessions that
  only SENT to it) during which the other queue was being read, averaged over
  the two directions: the writer of one is the reader of the other, online
  for both, which is what a conversation is;
- ``ack_send``: the share of one queue's ACKs followed within ``receipt_window``
  (0.5 s) by a SEND on the other, the larger of the two directions: the
  automatic delivery receipt;
- ``send_send``: the same with a SEND followed by a SEND within
  ``reply_window`` (60 s): a human reply.

``evaluate`` turns each signal's scores into ROC AUC and the true positive rate
at 1 % and 0.1 % false positive rate (scikit-learn's ``roc_auc_score`` and
``roc_curve``), with the positive and negative pair counts behind them.

Cost: every signal is a handful of numpy calls per queue (event times sorted
once, looked up with ``searchsorted``), never a Python loop over events or pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from onionpost.lab.relayview import QueueActivity, RelayView

QUESTIONS = ("same_person", "same_conversation")
FPR_TARGETS = (0.01, 0.001)
# Cap on the (queues x events) block searched at once, so a queue with a long
# history does not allocate queues * events floats in one go.
_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Pairs:
    """Candidate pairs ``(queues[i[k]], queues[j[k]])`` with their true labels."""

    queues: tuple[QueueActivity, ...]
    i: np.ndarray
    j: np.ndarray
    same_person: np.ndarray
    same_conversation: np.ndarray
    t0: float
    span: float

    def __len__(self) -> int:
        return len(self.i)

    def labels(self, question: str) -> np.ndarray:
        if question not in QUESTIONS:
            raise ValueError(f"question must be one of {QUESTIONS}, got {question!r}")
        return getattr(self, question)

    def names(self) -> list[tuple[str, str]]:
        return [(self.queues[a].name or self.queues[a].key, self.queues[b].name or self.queues[b].key)
                for a, b in zip(self.i.tolist(), self.j.tolist())]


def pairs(view: RelayView, only: Iterable[tuple[str, str]] | None = None) -> Pairs:
    """All unordered pairs of the truth's queues, or just the pairs in ``only``
    (each a pair of queue names, rids or snds)."""
    if only is None:
        queues = view.labelled()
        n = len(queues)
        i, j = np.triu_indices(n, k=1)
    else:
        wanted = [(view.queue(a), view.queue(b)) for a, b in only]
        queues = list({q.key: q for pair in wanted for q in pair}.values())
        index = {q.key: k for k, q in enumerate(queues)}
        i = np.asarray([index[a.key] for a, _ in wanted], dtype=np.intp)
        j = np.asarray([index[b.key] for _, b in wanted], dtype=np.intp)
    reader = np.asarray([q.reader for q in queues], dtype=object)
    writer = np.asarray([q.writer for q in queues], dtype=object)
    conv = np.asarray([q.conversation for q in queues], dtype=object)
    known = np.asarray([q.reader is not None and q.writer is not None for q in queues], dtype=bool)
    both = known[i] & known[j] if len(i) else np.zeros(0, dtype=bool)
    same_person = both & (reader[i] == reader[j])
    swapped = both & (reader[i] == writer[j]) & (writer[i] == reader[j])
    # A conversation name, where the truth gives one, must agree as well.
    same_conv_name = np.asarray([ca is None or cb is None or ca == cb for ca, cb in zip(conv[i], conv[j])], dtype=bool)
    return Pairs(
        queues=tuple(queues), i=np.asarray(i, dtype=np.intp), j=np.asarray(j, dtype=np.intp),
        same_person=np.asarray(same_person, dtype=bool),
        same_conversation=np.asarray(swapped & same_conv_name, dtype=bool),
        t0=view.start, span=max(view.end - view.start, 0.0),
    )


# -- primitives over all queues at once ------------------------------------------

def _layout(targets: list[np.ndarray], t0: float, stride: float):
    """All target lists on one sorted axis: queue b's times shifted by b * stride."""
    offsets = np.arange(len(targets), dtype=float) * stride
    lengths = np.asarray([len(t) for t in targets], dtype=np.intp)
    ends = np.cumsum(lengths)
    keys = np.concatenate([np.zeros(0)] + [t - t0 + off for t, off in zip(targets, offsets)])
    return keys, offsets, ends - lengths, ends


def _blocks(src: np.ndarray, n_targets: int):
    step = max(1, _BLOCK // max(n_targets, 1))
    for k in range(0, len(src), step):
        yield src[k:k + step]


def window_hits(sources: list[np.ndarray], targets: list[np.ndarray], lo: float, hi: float,
                *, t0: float = 0.0, span: float | None = None, include_lo: bool = True) -> np.ndarray:
    """``H[a, b]``: how many events of ``sources[a]`` have at least one event of
    ``targets[b]`` in ``[t + lo, t + hi]`` (``(t + lo, ...`` if not ``include_lo``).

    Each list must be sorted; times are taken relative to ``t0`` and must lie in
    ``[t0, t0 + span]``. Window edges hold to float precision of ``queues * span``
    (about 1e-8 s for a thousand queues over a day).
    """
    if span is None:
        span = max((float(np.max(x)) - t0 for x in (*sources, *targets) if len(x)), default=0.0)
    # Segments further apart than any window: a window never reaches another queue's times.
    stride = span + 2 * max(abs(lo), abs(hi)) + 1.0
    keys, offsets, _, _ = _layout(targets, t0, stride)
    hits = np.zeros((len(sources), len(targets)), dtype=np.int64)
    for a, src in enumerate(sources):
        for chunk in _blocks(src, len(targets)):
            q = (chunk - t0)[None, :] + offsets[:, None]
            left = np.searchsorted(keys, q + lo, side="left" if include_lo else "right")
            right = np.searchsorted(keys, q + hi, side="right")
            hits[a] += (right > left).sum(axis=1)
    return hits


def min_gaps(sources: list[np.ndarray], targets: list[np.ndarray], *, t0: float = 0.0,
             span: float | None = None) -> np.ndarray:
    """``G[a, b]``: the smallest ``|s - t|`` over events s of ``sources[a]`` and t
    of ``targets[b]``; ``inf`` when either is empty. Lists must be sorted."""
    if span is None:
        span = max((float(np.max(x)) - t0 for x in (*sources, *targets) if len(x)), default=0.0)
    stride = 2 * span + 1.0
    keys, offsets, starts, ends = _layout(targets, t0, stride)
    gaps = np.full((len(sources), len(targets)), np.inf)
    if len(keys) == 0:
        return gaps
    last = len(keys) - 1
    for a, src in enumerate(sources):
        for chunk in _blocks(src, len(targets)):
            q = (chunk - t0)[None, :] + offsets[:, None]
            idx = np.searchsorted(keys, q, side="left")
            # Nearest neighbours on either side, if they belong to queue b's segment.
            after = np.where(idx < ends[:, None], keys[np.minimum(idx, last)] - q, np.inf)
            before = np.where(idx > starts[:, None], q - keys[np.maximum(idx - 1, 0)], np.inf)
            gaps[a] = np.minimum(gaps[a], np.minimum(after, before).min(axis=1))
    return gaps


def interval_overlap(intervals: list[np.ndarray], others: list[np.ndarray] | None = None) -> np.ndarray:
    """``I[a, b]``: total length of the intersection of queue a's ``intervals``
    and queue b's (``others``' b-th, if given; each an (m, 2) array of sorted,
    disjoint rows)."""
    columns = intervals if others is None else others
    n = len(columns)
    starts = np.concatenate([np.zeros(0)] + [iv[:, 0] for iv in columns])
    ends = np.concatenate([np.zeros(0)] + [iv[:, 1] for iv in columns])
    owner = np.repeat(np.arange(n), [len(iv) for iv in columns])
    overlap = np.zeros((len(intervals), n))
    for a, iv in enumerate(intervals):
        if len(iv) == 0 or len(starts) == 0:
            continue
        s_a, e_a = iv[:, 0], iv[:, 1]
        covered = np.concatenate([[0.0], np.cumsum(e_a - s_a)])

        def measure_before(x: np.ndarray) -> np.ndarray:
            # Length of a's intervals left of x: the whole ones ending by x, plus
            # the part of the next one that starts before x.
            k = np.searchsorted(e_a, x, side="right")
            partial = np.where(k < len(s_a), np.maximum(0.0, x - s_a[np.minimum(k, len(s_a) - 1)]), 0.0)
            return covered[k] + partial

        # b's intervals are disjoint, so |a ∩ b| is the sum over b's intervals
        # of the length of a inside each of them.
        overlap[a] = np.bincount(owner, weights=measure_before(ends) - measure_before(starts), minlength=n)
    return overlap


# -- the signals ------------------------------------------------------------------

def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _co_occurrence(pr: Pairs, lists: list[np.ndarray], delta: float) -> np.ndarray:
    hits = window_hits(lists, lists, -delta, delta, t0=pr.t0, span=pr.span)
    counts = np.asarray([len(x) for x in lists], dtype=float)
    i, j = pr.i, pr.j
    return _ratio(hits[i, j] + hits[j, i], counts[i] + counts[j])


def _nearest(pr: Pairs, lists: list[np.ndarray], delta: float) -> np.ndarray:
    gaps = min_gaps(lists, lists, t0=pr.t0, span=pr.span)[pr.i, pr.j]
    return np.where(np.isfinite(gaps), 1.0 / (1.0 + gaps / delta), 0.0)


def _followed(pr: Pairs, first: list[np.ndarray], then: list[np.ndarray], window: float) -> np.ndarray:
    hits = window_hits(first, then, 0.0, window, t0=pr.t0, span=pr.span, include_lo=False)
    share = _ratio(hits, np.asarray([len(x) for x in first], dtype=float)[:, None])
    return np.maximum(share[pr.i, pr.j], share[pr.j, pr.i])


def co_subscription(pr: Pairs, delta: float = 0.1) -> np.ndarray:
    """Share of both queues' SUBs that have a SUB of the other within ``delta`` s."""
    return _co_occurrence(pr, [q.subs for q in pr.queues], delta)


def co_subscription_window(pr: Pairs, delta: float = 0.1) -> np.ndarray:
    """``1 / (1 + gap / delta)`` for the smallest gap between a SUB of each."""
    return _nearest(pr, [q.subs for q in pr.queues], delta)


def co_closing(pr: Pairs, delta: float = 0.1) -> np.ndarray:
    """Share of both queues' session closes that have a close of the other within ``delta`` s."""
    return _co_occurrence(pr, [q.closes for q in pr.queues], delta)


def co_closing_window(pr: Pairs, delta: float = 0.1) -> np.ndarray:
    """``1 / (1 + gap / delta)`` for the smallest gap between session closes of each."""
    return _nearest(pr, [q.closes for q in pr.queues], delta)


def co_session(pr: Pairs) -> np.ndarray:
    """Jaccard overlap of the sessions that carried each queue's reader commands."""
    index = {s: k for k, s in enumerate(sorted({s for q in pr.queues for s in q.read_sessions}))}
    member = np.zeros((len(pr.queues), max(1, len(index))), dtype=np.float32)
    for row, q in enumerate(pr.queues):
        member[row, [index[s] for s in q.read_sessions]] = 1.0
    inter = (member @ member.T).astype(float)[pr.i, pr.j]  # queues x queues: shared sessions
    sizes = member.sum(axis=1).astype(float)
    return _ratio(inter, sizes[pr.i] + sizes[pr.j] - inter)


def online_overlap(pr: Pairs) -> np.ndarray:
    """Jaccard overlap of the time each queue had an open session carrying it."""
    return _jaccard(pr, [q.intervals for q in pr.queues])


def reader_overlap(pr: Pairs) -> np.ndarray:
    """Jaccard overlap of the time each queue's reader had a session reading it."""
    return _jaccard(pr, [q.read_intervals for q in pr.queues])


def _length(intervals: list[np.ndarray]) -> np.ndarray:
    return np.asarray([float(np.sum(iv[:, 1] - iv[:, 0])) for iv in intervals])


def _jaccard(pr: Pairs, intervals: list[np.ndarray]) -> np.ndarray:
    """|a ∩ b| / |a ∪ b| of each pair's intervals."""
    inter, length = interval_overlap(intervals), _length(intervals)
    i, j = pr.i, pr.j
    # Symmetrised: the two directions differ only by float rounding.
    both = (inter[i, j] + inter[j, i]) / 2
    return _ratio(both, length[i] + length[j] - both)


def read_write_overlap(pr: Pairs) -> np.ndarray:
    """Share of one queue's writing time during which the other was being read, the mean of both directions."""
    reads, writes = [q.read_intervals for q in pr.queues], [q.write_intervals for q in pr.queues]
    cross, written = interval_overlap(reads, writes), _length(writes)  # cross[a, b] = |read(a) ∩ write(b)|
    i, j = pr.i, pr.j
    return (_ratio(cross[i, j], written[j]) + _ratio(cross[j, i], written[i])) / 2


def ack_send(pr: Pairs, receipt_window: float = 0.5) -> np.ndarray:
    """Share of one queue's ACKs followed within ``receipt_window`` s by a SEND on
    the other (the delivery receipt), the larger direction."""
    return _followed(pr, [q.acks for q in pr.queues], [q.sends for q in pr.queues], receipt_window)


def send_send(pr: Pairs, reply_window: float = 60.0) -> np.ndarray:
    """Share of one queue's SENDs followed within ``reply_window`` s by a SEND on
    the other (a reply), the larger direction."""
    sends = [q.sends for q in pr.queues]
    return _followed(pr, sends, sends, reply_window)


SIGNALS: dict[str, Callable[..., np.ndarray]] = {
    "co_subscription": co_subscription,
    "co_subscription_window": co_subscription_window,
    "co_closing": co_closing,
    "co_closing_window": co_closing_window,
    "co_session": co_session,
    "online_overlap": online_overlap,
    "reader_overlap": reader_overlap,
    "read_write_overlap": read_write_overlap,
    "ack_send": ack_send,
    "send_send": send_send,
}


def score_all(pr: Pairs, *, delta: float = 0.1, receipt_window: float = 0.5,
              reply_window: float = 60.0) -> dict[str, np.ndarray]:
    """Every signal's scores, aligned with ``pr``."""
    return {
        "co_subscription": co_subscription(pr, delta),
        "co_subscription_window": co_subscription_window(pr, delta),
        "co_closing": co_closing(pr, delta),
        "co_closing_window": co_closing_window(pr, delta),
        "co_session": co_session(pr),
        "online_overlap": online_overlap(pr),
        "reader_overlap": reader_overlap(pr),
        "read_write_overlap": read_write_overlap(pr),
        "ack_send": ack_send(pr, receipt_window),
        "send_send": send_send(pr, reply_window),
    }


# -- ROC --------------------------------------------------------------------------

def _fpr_key(fpr: float) -> str:
    return f"tpr_at_{fpr * 100:g}pct_fpr"


def roc_metrics(labels: np.ndarray, scores: np.ndarray, fprs: Iterable[float] = FPR_TARGETS) -> dict:
    """ROC AUC and, per target FPR, the best TPR at a threshold whose FPR is at
    most the target; None where the labels hold no positive or no negative."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    positive = int(labels.sum())
    negative = int(len(labels) - positive)
    out: dict = {"auc": None, "positive": positive, "negative": negative}
    fprs = tuple(fprs)
    for target in fprs:
        out[_fpr_key(target)] = None
    if positive == 0 or negative == 0:
        return out
    out["auc"] = float(roc_auc_score(labels, scores))
    # Every threshold, so the best operating point under each target is on the curve.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for target in fprs:
        out[_fpr_key(target)] = float(tpr[fpr <= target].max())
    return out


def evaluate(view: RelayView, *, delta: float = 0.1, receipt_window: float = 0.5,
             reply_window: float = 60.0) -> dict:
    """Score every pair of the truth's queues with every signal and measure each
    signal against each question.

    Returns ``{"queues", "unlabelled_queues", "pairs", "params", "signals"}``;
    ``signals[name][question]`` holds ``auc``, ``tpr_at_1pct_fpr``,
    ``tpr_at_0.1pct_fpr``, ``positive`` and ``negative``; ``pairs[question]``
    holds the positive and negative counts.
    """
    pr = pairs(view)
    scores = score_all(pr, delta=delta, receipt_window=receipt_window, reply_window=reply_window)
    counts = {}
    for question in QUESTIONS:
        positive = int(pr.labels(question).sum())
        counts[question] = {"positive": positive, "negative": len(pr) - positive}
    return {
        "queues": len(pr.queues),
        "unlabelled_queues": len(view.queues) - len(pr.queues),
        "pairs": {"total": len(pr), **counts},
        "params": {"delta": delta, "receipt_window": receipt_window, "reply_window": reply_window},
        "signals": {
            name: {question: roc_metrics(pr.labels(question), s) for question in QUESTIONS}
            for name, s in scores.items()
        },
    }


def format_table(results: dict) -> str:
    """A plain-text table of ``evaluate``'s results, one row per signal and question."""

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    header = ("signal", "question", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "pairs (pos/neg)")
    rows = [header]
    for name, per_question in results["signals"].items():
        for question, m in per_question.items():
            rows.append((name, question, num(m["auc"]), num(m[_fpr_key(0.01)]), num(m[_fpr_key(0.001)]),
                         f"{m['positive']}/{m['negative']}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[c].ljust(widths[c]) if c < 2 else r[c].rjust(widths[c]) for c in range(len(header))]
        lines.append(" | ".join(cells).rstrip())
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)
