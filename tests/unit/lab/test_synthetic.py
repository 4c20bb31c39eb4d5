"""The synthetic populations: seeded, valid traces, and the two modes really differ only in timing."""

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from onionpost.lab import synthetic
from onionpost.lab.relayview import load, read_trace

pytestmark = pytest.mark.timeout(60)

SIZE = {"n_people": 24, "contacts": 3}


@pytest.fixture(scope="module", params=synthetic.MODES)
def trace(request):
    return synthetic.generate(mode=request.param, seed=5, forward_fraction=0.1, **SIZE)


def test_the_same_seed_gives_the_same_trace():
    a = synthetic.generate(seed=1, n_people=10, contacts=2)
    assert a.events == synthetic.generate(seed=1, n_people=10, contacts=2).events
    assert a.truth == synthetic.generate(seed=1, n_people=10, contacts=2).truth
    assert a.events != synthetic.generate(seed=2, n_people=10, contacts=2).events


def test_population_shape(trace):
    rows = trace.truth["queues"]
    assert len(rows) == SIZE["n_people"] * SIZE["contacts"]
    assert len({r["rid"] for r in rows} | {r["snd"] for r in rows}) == 2 * len(rows)
    reads = Counter(r["reader"] for r in rows)
    writes = Counter(r["writer"] for r in rows)
    assert set(reads.values()) == set(writes.values()) == {SIZE["contacts"]}
    by_conversation = defaultdict(list)
    for r in rows:
        assert r["reader"] != r["writer"]
        by_conversation[r["conversation"]].append((r["reader"], r["writer"]))
    for (r1, w1), (r2, w2) in by_conversation.values():
        assert (r1, w1) == (w2, r2)


def test_the_trace_keeps_the_contract_and_its_sessions(trace):
    events = read_trace(trace.events)  # validates every event
    times = [e["t"] for e in events]
    assert times == sorted(times)
    opened, closed = {}, {}
    for e in events:
        if e["ev"] == "open":
            opened[e["session"]] = e["t"]
        elif e["ev"] == "close":
            closed[e["session"]] = e["t"]
    forwarded = 0
    for e in events:
        if e["ev"] in ("cmd", "msg"):
            s = e["session"]
            assert opened[s] <= e["t"] and (s not in closed or e["t"] <= closed[s]), e
            if e["ev"] == "cmd" and e["via"] == "forward":
                forwarded += 1
                assert s == 0 and e["cmd"] == "SEND"
    assert 0 not in closed and forwarded > 0
    ids = {(e["rid"], e["snd"]) for e in events if e["ev"] == "ids"}
    assert ids == {(r["rid"], r["snd"]) for r in trace.truth["queues"]}
    view = trace.view()
    assert len(view.labelled()) == len(trace.truth["queues"])
    assert all(0 not in q.sessions for q in view.queues.values())


def test_both_modes_have_the_same_rates():
    counts = {}
    for mode in synthetic.MODES:
        events = synthetic.generate(mode=mode, seed=5, **SIZE).events
        counts[mode] = Counter(e.get("cmd", e["ev"]) for e in events)
    for what in ("SUB", "SEND", "ACK", "msg"):
        ratio = counts["correlated"][what] / counts["independent"][what]
        assert 0.8 <= ratio <= 1.25, (what, counts)


def sessions_subs(trace) -> dict[int, list[tuple[float, str]]]:
    reader = {r["rid"]: r["reader"] for r in trace.truth["queues"]}
    subs = defaultdict(list)
    for e in trace.events:
        if e["ev"] == "cmd" and e["cmd"] == "SUB":
            subs[e["session"]].append((e["t"], reader[e["queue"]]))
    return subs


def receipt_share(trace, within: float) -> float:
    """Share of ACKs followed within ``within`` s by a SEND on the reverse queue."""
    rows = trace.truth["queues"]
    reverse = {}
    for r in rows:
        for other in rows:
            if other["conversation"] == r["conversation"] and other is not r:
                reverse[r["rid"]] = other["snd"]
    sends = defaultdict(list)
    for e in trace.events:
        if e["ev"] == "cmd" and e["cmd"] == "SEND":
            sends[e["queue"]].append(e["t"])
    acks = [(e["t"], e["queue"]) for e in trace.events if e["ev"] == "cmd" and e["cmd"] == "ACK"]
    followed = sum(any(0 < s - t <= within for s in sends[reverse[rid]]) for t, rid in acks)
    return followed / len(acks)


def test_correlated_mode_subscribes_a_person_at_once_and_receipts_follow_acks():
    trace = synthetic.generate(mode="correlated", seed=5, **SIZE)
    for session, subs in sessions_subs(trace).items():
        times = [t for t, _ in subs]
        assert len({who for _, who in subs}) == 1, session
        assert len(subs) == SIZE["contacts"] and max(times) - min(times) < 0.1
    # Receipts answer message and reply ACKs (not receipt ACKs): about half of all ACKs.
    assert receipt_share(trace, 0.1) > 0.4


def test_independent_mode_gives_every_queue_its_own_sessions_and_timing():
    trace = synthetic.generate(mode="independent", seed=5, **SIZE)
    assert all(len(subs) == 1 for subs in sessions_subs(trace).values())
    assert receipt_share(trace, 0.1) < 0.02


def test_write_round_trips_through_files(tmp_path):
    trace = synthetic.generate(seed=4, n_people=8, contacts=2)
    trace_path, truth_path = trace.write(tmp_path / "run")
    assert json.loads(truth_path.read_text())["queues"] == trace.truth["queues"]
    from_files = load(trace_path, truth_path)
    in_memory = trace.view()
    assert from_files.queues.keys() == in_memory.queues.keys()
    for key, q in in_memory.queues.items():
        assert np.array_equal(from_files.queues[key].subs, q.subs)
        assert np.array_equal(from_files.queues[key].intervals, q.intervals)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sometimes"}, "mode"),
    ({"n_people": 4, "contacts": 4}, "contacts"),
    ({"n_people": 5, "contacts": 3}, "even number"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**kwargs)
