"""The flow-correlation attack on synthetic flows with a known answer (cannot flake: fixed seeds)."""

import numpy as np
import pytest

from onionpost.lab import flowcorr, linkage, synthetic, synthflow
from onionpost.lab.flowcorr import BLOCK, Params

pytestmark = pytest.mark.timeout(60)

SIZE = {"n_people": 20, "sessions_per_person": 4}  # 80 sessions: 80 positive and 1520 negative pairs


def auc(mode: str, params: Params = Params(), **kwargs) -> float:
    flows, sessions = synthflow.generate(mode=mode, seed=7, **SIZE, **kwargs)
    result = flowcorr.evaluate(flows, sessions, params)
    assert result["pairs"]["positive"] == 80 and result["pairs"]["negative"] == 1520
    return result["metrics"]["auc"]


@pytest.mark.parametrize("conditions", [{}, {"jitter": 0.4, "drop": 0.3}, {"noise_rate": 3.0}])
def test_a_client_s_flow_links_to_its_own_sessions(conditions):
    assert auc("correlated", **conditions) >= 0.95


@pytest.mark.parametrize("conditions", [{}, {"jitter": 0.4, "drop": 0.3}])
def test_independent_flows_score_chance(conditions):
    assert 0.35 <= auc("independent", **conditions) <= 0.65


def test_the_lag_search_finds_the_latency():
    flows, sessions = synthflow.generate(mode="correlated", seed=7, latency=1.5, jitter=0.05, **SIZE)
    scored = flowcorr.score(flows, sessions, Params(bin=0.5, max_lag=2.5))
    assert np.all(scored.lag[scored.labels()] == 1.5)
    assert auc("correlated", Params(max_lag=2.5), latency=1.5, jitter=0.05) >= 0.95
    # Without the search the same flows fall to chance: the windows no longer line up.
    assert auc("correlated", Params(max_lag=0.0), latency=1.5, jitter=0.05) <= 0.7


def test_the_same_seed_gives_the_same_flows():
    a, _ = synthflow.generate(seed=3, n_people=3)
    b, _ = synthflow.generate(seed=3, n_people=3)
    c, _ = synthflow.generate(seed=4, n_people=3)
    assert all(np.array_equal(x.t, y.t) and np.array_equal(x.size, y.size) for x, y in zip(a, b))
    assert not np.array_equal(a[0].t, c[0].t)


def test_a_window_votes_only_where_the_session_is_active():
    # One session with a single burst; a flow with the same burst 0.25 s early, one with it elsewhere.
    t0 = 1000.0
    session = flowcorr.Series("s", np.array([t0 + 40.0, t0 + 40.0]), np.array([BLOCK, -BLOCK]), "alice")
    same = flowcorr.Series("a", np.array([t0 + 39.75, t0 + 40.25]), np.array([9000, -9000]), "alice")
    other = flowcorr.Series("b", np.array([t0 + 80.0, t0 + 80.5]), np.array([9000, -9000]), "bob")
    scored = flowcorr.score([same, other], [session], Params(window=20, step=10), start=t0, end=t0 + 120)
    assert scored.active.tolist() == [2]  # the two overlapping windows holding t0 + 40
    assert scored.votes[:, 0].tolist() == [2, 0]
    assert scored.score[0, 0] > 0.9 > 0.5 > scored.score[1, 0]


@pytest.mark.parametrize("bad", [{"bin": 0}, {"window": 0.5, "bin": 0.5}, {"step": 0}, {"step": 31},
                                 {"max_lag": -1}, {"threshold": 2}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match="out of range"):
        Params(**bad)


def test_relay_sessions_are_blocks_in_and_out_with_their_owner():
    truth = {"queues": [{"name": "q", "rid": "aa", "snd": "bb", "reader": "alice", "writer": "bob"}]}
    events = [
        {"t": 1.0, "ev": "open", "session": 1},
        {"t": 2.0, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "aa", "via": "direct"},
        {"t": 3.0, "ev": "open", "session": 2},
        {"t": 4.0, "ev": "cmd", "session": 2, "cmd": "SEND", "queue": "bb", "via": "direct"},
        {"t": 4.1, "ev": "msg", "session": 1, "queue": "aa"},
        {"t": 4.2, "ev": "cmd", "session": 1, "cmd": "ACK", "queue": "aa", "via": "direct"},
        {"t": 5.0, "ev": "cmd", "session": 9, "cmd": "SEND", "queue": "bb", "via": "forward"},
        {"t": 6.0, "ev": "cmd", "session": 2, "cmd": "PING", "queue": None, "via": "direct"},
    ]
    alice, bob = flowcorr.relay_sessions(events, truth)
    assert (alice.name, alice.owner, alice.reads) == ("session1", "alice", frozenset({"aa"}))
    assert alice.t.tolist() == [1.0, 1.0, 2.0, 2.0, 4.1, 4.2, 4.2]
    assert alice.size.tolist() == [-BLOCK, BLOCK, -BLOCK, BLOCK, -BLOCK, -BLOCK, BLOCK]
    assert (bob.owner, bob.reads, len(bob.t)) == ("bob", frozenset(), 6)  # the forwarded SEND is not his


def test_both_vantage_points_link_queues_the_relay_alone_cannot():
    # The relay sees independent timing (its signals are at chance); the guard observer sees each person's link.
    trace = synthetic.generate(n_people=12, contacts=2, mode="independent", seed=3, duration=1800)
    sessions = flowcorr.relay_sessions(trace.events, trace.truth)
    flows = synthflow.guard_flows(sessions, seed=3)
    assert [f.owner for f in flows] == sorted({s.owner for s in sessions if s.owner})
    pr = linkage.pairs(trace.view())
    scored = flowcorr.score(flows, sessions)
    result = flowcorr.evaluate_together(pr, scored, linkage.co_subscription(pr))
    assert result["pairs"]["positive"] == 12
    assert result["relay"]["auc"] <= 0.65
    assert result["flow"]["auc"] >= 0.85 and result["together"]["auc"] >= 0.8
    one = flowcorr.evaluate_together(pr, scored, linkage.co_subscription(pr), ["user0"])
    # 24 queues, user0 reads 2: the pairs holding one or both of them.
    assert one["watched"] == ["user0"] and one["pairs"] == {"total": 2 * 22 + 1, "positive": 1, "negative": 44}


def test_together_is_near_certain_when_both_views_correlate():
    trace = synthetic.generate(n_people=12, contacts=2, mode="correlated", seed=3, duration=1800)
    sessions = flowcorr.relay_sessions(trace.events, trace.truth)
    pr = linkage.pairs(trace.view())
    result = flowcorr.evaluate_together(pr, flowcorr.score(synthflow.guard_flows(sessions, seed=3), sessions),
                                        linkage.co_subscription(pr))
    assert result["together"]["auc"] >= 0.95


def test_the_table_has_a_row_per_attack():
    flows, sessions = synthflow.generate(n_people=4, sessions_per_person=2, seed=2, duration=120)
    table = flowcorr.format_table(flowcorr.evaluate(flows, sessions))
    lines = table.splitlines()
    assert lines[0].split(" | ")[0].strip() == "attack" and len(lines) == 3
    assert lines[2].startswith("flow -> session (same person)") and lines[2].endswith("8/24")


def test_an_observer_of_one_person_alone_links_their_queues():
    # No other flow to rank against: each pair is ranked against the flow moved in time.
    trace = synthetic.generate(n_people=12, contacts=2, mode="independent", seed=3, duration=1800)
    sessions = flowcorr.relay_sessions(trace.events, trace.truth)
    flows = synthflow.guard_flows(sessions, seed=3)
    pr = linkage.pairs(trace.view())
    aucs = []
    for flow in flows[:3]:
        result = flowcorr.evaluate_together(pr, flowcorr.score([flow], sessions), linkage.co_subscription(pr))
        assert result["watched"] == [flow.owner] and result["pairs"]["positive"] == 1
        aucs.append(result["flow"]["auc"])
    assert np.mean(aucs) >= 0.75  # 0.80, 0.83, 0.76 on this seed; the relay alone: 0.5, 0.39, 0.86


def test_null_ranks_put_the_true_alignment_above_shifted_copies():
    flows, sessions = synthflow.generate(mode="correlated", seed=7, n_people=4, sessions_per_person=2)
    ranks = flowcorr.null_ranks(flowcorr.score(flows, sessions), shifts=8)
    scored_labels = flowcorr.score(flows, sessions).labels()
    assert ranks.shape == scored_labels.shape and set(np.unique(ranks)) <= {k / 8 for k in range(9)}
    assert ranks[scored_labels].mean() >= 0.95 and ranks[~scored_labels].mean() <= 0.7
