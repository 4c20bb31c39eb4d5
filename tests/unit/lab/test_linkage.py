"""The linkage scores: exact on a hand-made trace, equal to brute force, ROC equal to
scikit-learn's, ~1 where the synthetic population leaks and ~0.5 where it cannot.

These guard the measurement itself: a signal that scored everything alike, a
label mix-up or a hand-rolled ROC would pass a "the attack works" check, not these.
"""

import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from onionpost.lab import linkage, synthetic
from onionpost.lab.relayview import load
from tests.unit.lab import handmade as hm

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def handmade():
    return load(hm.events(), hm.truth())


def test_pairs_and_labels_on_the_handmade_trace(handmade):
    pr = linkage.pairs(handmade)
    assert pr.names() == hm.PAIRS
    assert pr.same_person.tolist() == hm.SAME_PERSON
    assert pr.same_conversation.tolist() == hm.SAME_CONVERSATION


@pytest.mark.parametrize("signal", list(linkage.SIGNALS))
def test_every_signal_scores_the_handmade_trace_as_worked_out_by_hand(handmade, signal):
    scores = linkage.SIGNALS[signal](linkage.pairs(handmade))
    np.testing.assert_allclose(scores, hm.EXPECTED[signal], rtol=0, atol=1e-6)


def test_one_pair_can_be_scored_on_its_own(handmade):
    pr = linkage.pairs(handmade, only=[("q4", "q1"), (hm.SND["q3"], "q1")])
    assert pr.names() == [("q4", "q1"), ("q3", "q1")]
    assert pr.same_person.tolist() == [False, True]
    assert linkage.co_subscription(pr).tolist() == [0, 1]
    assert linkage.send_send(pr).tolist() == [1, 0]


def test_roc_numbers_on_the_handmade_trace_are_sklearns(handmade):
    results = linkage.evaluate(handmade)
    assert results["queues"] == 4 and results["unlabelled_queues"] == 1
    assert results["pairs"] == {"total": 6, "same_person": {"positive": 1, "negative": 5},
                                "same_conversation": {"positive": 2, "negative": 4}}
    labels = {"same_person": hm.SAME_PERSON, "same_conversation": hm.SAME_CONVERSATION}
    for signal, expected in hm.EXPECTED.items():
        for question, y in labels.items():
            m = results["signals"][signal][question]
            assert m["auc"] == pytest.approx(roc_auc_score(y, expected), abs=1e-12), (signal, question)
            assert (m["positive"], m["negative"]) == (sum(y), len(y) - sum(y))
    # A few worked by hand: a tie counts half.
    assert results["signals"]["co_subscription"]["same_person"]["auc"] == 1.0
    assert results["signals"]["co_subscription"]["same_conversation"]["auc"] == 0.375
    assert results["signals"]["co_closing"]["same_conversation"]["tpr_at_1pct_fpr"] == 1.0
    # q1/q3's 2/3 is below two negatives' 1: no threshold passes it with no false positive.
    assert results["signals"]["co_closing"]["same_person"]["tpr_at_1pct_fpr"] == 0.0


def brute_force_tpr_at(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Best TPR over every threshold whose FPR is at most the target (predict linked if score >= threshold)."""
    pos, neg = scores[labels], scores[~labels]
    best = 0.0
    for threshold in [np.inf, *np.unique(scores)]:
        if np.mean(neg >= threshold) <= target:
            best = max(best, float(np.mean(pos >= threshold)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_roc_metrics_equal_sklearn_and_a_brute_force_threshold_sweep(seed):
    rng = np.random.default_rng(seed)
    n = 1500
    labels = rng.random(n) < 0.1
    # Coarse scores, so there are many ties, shifted up a little for positives.
    scores = np.round(rng.random(n) + 0.3 * labels, 1)
    m = linkage.roc_metrics(labels, scores)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(brute_force_tpr_at(labels, scores, 0.01))
    assert m["tpr_at_0.1pct_fpr"] == pytest.approx(brute_force_tpr_at(labels, scores, 0.001))
    assert (m["positive"], m["negative"]) == (labels.sum(), n - labels.sum())


def test_undefined_roc_is_none_and_shown_as_na():
    m = linkage.roc_metrics(np.zeros(4, dtype=bool), np.arange(4.0))
    assert m["auc"] is None and m["tpr_at_1pct_fpr"] is None and m["negative"] == 4
    view = load(hm.events(), {"queues": hm.truth()["queues"][:2]})  # q1, q2: one pair, no same person
    table = linkage.format_table(linkage.evaluate(view))
    rows = [[cell.strip() for cell in line.split("|")] for line in table.splitlines()[2:]]
    assert ["co_subscription", "same_person", "n/a", "n/a", "n/a", "0/1"] in rows
    assert ["co_subscription", "same_conversation", "n/a", "n/a", "n/a", "1/0"] in rows


def test_a_queue_without_data_scores_zero(handmade):
    truth = hm.truth()
    truth["queues"].append({"name": "q5", "rid": "dd" * 8, "snd": "ee" * 8, "reader": "A", "writer": "C"})
    view = load(hm.events(), truth)
    pr = linkage.pairs(view, only=[("q1", "q5"), ("q5", "q4")])
    assert pr.same_person.tolist() == [True, False]
    for signal, fn in linkage.SIGNALS.items():
        assert fn(pr).tolist() == [0, 0], signal


def test_format_table_has_one_row_per_signal_and_question(handmade):
    table = linkage.format_table(linkage.evaluate(handmade)).splitlines()
    assert table[0].split(" | ") == ["signal                ", "question         ", "  AUC",
                                     "TPR@1%FPR", "TPR@0.1%FPR", "pairs (pos/neg)"]
    assert set(table[1]) <= {"-", "+"}
    assert len(table) == 2 + 2 * len(linkage.SIGNALS)
    # (q1, q2) has its receipt, (q3, q4) none: half the positives above every negative.
    assert "ack_send               | same_conversation | 0.750 |     0.500 |       0.500 |             2/4" in table


# -- the primitives against the obvious O(n^2) definitions --------------------------

def random_lists(rng, n_queues, span):
    return [np.sort(rng.uniform(0, span, rng.integers(0, 12))) for _ in range(n_queues)]


@pytest.mark.parametrize("seed", range(4))
def test_window_hits_and_min_gaps_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000.0
    # Times on a 0.01 s grid, so equalities at the window edges really happen.
    sources = [np.round(x, 2) + t0 for x in random_lists(rng, 7, 20.0)]
    targets = [np.round(x, 2) + t0 for x in random_lists(rng, 7, 20.0)]
    for lo, hi, include_lo in [(-0.5, 0.5, True), (0.0, 1.0, False), (0.0, 1.0, True)]:
        hits = linkage.window_hits(sources, targets, lo, hi, t0=t0, span=21.0, include_lo=include_lo)
        for a, src in enumerate(sources):
            for b, tgt in enumerate(targets):
                d = tgt[None, :] - src[:, None]
                inside = ((d >= lo - 1e-9) if include_lo else (d > lo + 1e-9)) & (d <= hi + 1e-9)
                assert hits[a, b] == inside.any(axis=1).sum(), (lo, hi, include_lo, a, b)
    gaps = linkage.min_gaps(sources, targets, t0=t0)
    for a, src in enumerate(sources):
        for b, tgt in enumerate(targets):
            expected = np.abs(tgt[None, :] - src[:, None]).min() if len(src) and len(tgt) else np.inf
            assert gaps[a, b] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_interval_overlap_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    intervals = []
    for _ in range(6):
        cuts = np.sort(rng.choice(np.arange(0, 100), size=2 * rng.integers(0, 5), replace=False)).astype(float)
        intervals.append(cuts.reshape(-1, 2))
    overlap = linkage.interval_overlap(intervals)
    grid = np.arange(0, 100, 0.5) + 0.25  # midpoints: every interval edge is on an integer
    cover = [np.any((grid[:, None] > iv[:, 0]) & (grid[:, None] < iv[:, 1]), axis=1) for iv in intervals]
    for a in range(6):
        for b in range(6):
            assert overlap[a, b] == pytest.approx(0.5 * np.sum(cover[a] & cover[b])), (a, b)


# -- synthetic populations: the measurement finds what is there, and only that -----

POPULATION = {"n_people": 80, "contacts": 2, "seed": 11}
# What the correlated mode builds in: a person's queues SUBscribed and closed
# together (same person; read in one session: reader_overlap); its sessions also
# carry the queues it writes, so the two queues of a conversation share sessions
# (co_closing) and each is read while the other is written (read_write_overlap); receipts within 0.1 s
# of each ACK (ack_send) and replies within 60 s (send_send) on the reverse queue.
MATCHING = [
    ("co_subscription", "same_person"),
    ("co_subscription_window", "same_person"),
    ("co_closing", "same_person"),
    ("co_closing_window", "same_person"),
    ("co_session", "same_person"),
    ("reader_overlap", "same_person"),
    ("co_closing", "same_conversation"),
    ("read_write_overlap", "same_conversation"),
    ("ack_send", "same_conversation"),
    ("send_send", "same_conversation"),
]
# Built in for neither question: SUB instants and ACK->receipt say nothing of the other.
UNRELATED = [("co_subscription", "same_conversation"), ("ack_send", "same_person"), ("co_session", "same_conversation"),
             ("reader_overlap", "same_conversation"), ("read_write_overlap", "same_person")]


@pytest.fixture(scope="module")
def correlated():
    return linkage.evaluate(synthetic.generate(mode="correlated", **POPULATION).view())


@pytest.fixture(scope="module")
def independent():
    return linkage.evaluate(synthetic.generate(mode="independent", **POPULATION).view())


def test_enough_pairs_for_the_statistics(correlated, independent):
    for results in (correlated, independent):
        assert results["queues"] == 160
        assert results["pairs"]["same_person"]["positive"] == 80
        assert results["pairs"]["same_conversation"]["positive"] == 80
        assert results["pairs"]["total"] == 160 * 159 // 2


@pytest.mark.parametrize("signal, question", MATCHING)
def test_correlated_population_is_linked_by_the_matching_signals(correlated, signal, question):
    assert correlated["signals"][signal][question]["auc"] >= 0.95


def test_correlated_exact_coincidences_are_found_at_low_false_positive_rates(correlated):
    assert correlated["signals"]["co_subscription"]["same_person"]["tpr_at_1pct_fpr"] == 1.0
    assert correlated["signals"]["ack_send"]["same_conversation"]["tpr_at_0.1pct_fpr"] == 1.0
    # Not built in, but a consequence: the two queues of a conversation are open together.
    assert correlated["signals"]["online_overlap"]["same_conversation"]["auc"] >= 0.85


@pytest.mark.parametrize("signal, question", UNRELATED)
def test_correlated_population_gives_nothing_to_the_unrelated_question(correlated, signal, question):
    assert abs(correlated["signals"][signal][question]["auc"] - 0.5) <= 0.1


@pytest.mark.parametrize("signal", list(linkage.SIGNALS))
def test_independent_population_is_chance_for_every_signal(independent, signal):
    for question in linkage.QUESTIONS:
        assert abs(independent["signals"][signal][question]["auc"] - 0.5) <= 0.1, question


def test_a_wrong_truth_drops_the_correlated_population_to_chance():
    trace = synthetic.generate(mode="correlated", **POPULATION)
    # Deal the ids out to the wrong truth rows: the labels no longer describe the trace.
    rows = trace.truth["queues"]
    ids = [(r["rid"], r["snd"]) for r in rows]
    order = np.random.default_rng(0).permutation(len(rows))
    wrong = {"queues": [{**r, "rid": ids[k][0], "snd": ids[k][1]} for r, k in zip(rows, order.tolist())]}
    results = linkage.evaluate(load(trace.events, wrong))
    for signal, question in MATCHING:
        assert abs(results["signals"][signal][question]["auc"] - 0.5) <= 0.1, (signal, question)


def test_evaluate_is_cheap():
    # About 40 queues and 2,000 events, then a few thousand pairs.
    small = synthetic.generate(20, 2, seed=3).view()
    assert len(small.labelled()) == 40 and 1500 <= small.events <= 4000
    started = time.perf_counter()
    linkage.evaluate(small)
    assert time.perf_counter() - started < 1.0
    larger = synthetic.generate(40, 2, seed=3).view()
    started = time.perf_counter()
    results = linkage.evaluate(larger)
    assert results["pairs"]["total"] == 80 * 79 // 2
    assert time.perf_counter() - started < 1.0


def test_the_docs_count_the_signals_there_are():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "lab.md").read_text(encoding="utf-8")
    assert f"`onionpost.lab.linkage`'s {len(linkage.SIGNALS)} timing signals" in docs
    for name in linkage.SIGNALS:
        assert name in linkage.__doc__, name
