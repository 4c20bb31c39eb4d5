"""The relay's view: rid/snd joining, sessions that carry a queue, and refusing a bad trace by line."""

import json

import numpy as np
import pytest

from onionpost.lab.relayview import TraceError, TruthError, load, read_trace
from tests.unit.lab import handmade as hm
from tests.unit.lab.handmade import RID, SND, STRANGER, T0

pytestmark = pytest.mark.timeout(30)


def test_sends_named_by_snd_are_joined_to_the_rid_through_ids_and_truth():
    view = load(hm.events(), hm.truth())
    q1, q2, q4 = view.queue("q1"), view.queue("q2"), view.queue("q4")
    # q1, q2: joined by the trace's ids events; q4: only through the truth.
    assert (q1.rid, q1.snd) == (RID["q1"], SND["q1"])
    assert q1.sends.tolist() == [T0 + 20.0] and q1.acks.tolist() == [T0 + 20.1]
    assert q1.msgs.tolist() == [T0 + 20.01]
    assert q2.sends.tolist() == [T0 + 20.3]
    assert q4.sends.tolist() == [T0 + 30.0] and q4.send_forwarded.tolist() == [True]
    assert view.queue(SND["q4"]) is q4 and view.queue(RID["q4"].upper()) is q4
    assert (q1.reader, q1.writer, q1.conversation) == ("A", "B", "c1")


def test_without_truth_the_ids_events_still_join_and_unjoinable_snds_stay_apart():
    view = load(hm.events())
    assert view.queue(SND["q1"]).rid == RID["q1"]
    # No ids event for q4: its SEND is a queue of its own, keyed by the snd.
    q4_send = view.queues[SND["q4"]]
    assert q4_send.rid is None and q4_send.snd == SND["q4"] and len(q4_send.sends) == 1
    assert view.queues[RID["q4"]].subs.tolist() == [T0 + 10.5]
    assert view.labelled() == []
    stranger = view.queues[STRANGER]
    assert stranger.rid is None and stranger.sessions == (2,)


def test_a_session_carries_the_queues_its_commands_named_but_not_forwarded_ones():
    view = load(hm.events(), hm.truth())
    assert view.queue("q1").sessions == (1, 2)  # A's SUB/ACK, B's SEND
    assert view.queue("q1").intervals.tolist() == [[T0, T0 + 100]]
    assert view.queue("q1").closes.tolist() == [T0 + 50, T0 + 100]
    # q4's SEND came forwarded on session 9 (another relay's): not a session of q4.
    assert view.queue("q4").sessions == (3,)
    assert view.queue("q4").intervals.tolist() == [[T0 + 10, T0 + 100.05]]
    assert view.sessions[9].open == T0 and view.sessions[9].close is None
    assert view.start == T0 and view.end == T0 + 100.05


def test_unclosed_session_runs_to_the_end_and_intervals_are_merged():
    events = [
        {"t": 0, "ev": "open", "session": 1},
        {"t": 1, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "aa", "via": "direct"},
        {"t": 2, "ev": "open", "session": 2},
        {"t": 3, "ev": "cmd", "session": 2, "cmd": "GET", "queue": "aa", "via": "direct"},
        {"t": 4, "ev": "close", "session": 1},
        {"t": 6, "ev": "open", "session": 3},
        {"t": 7, "ev": "cmd", "session": 3, "cmd": "ACK", "queue": "AA", "via": "direct"},
        {"t": 8, "ev": "close", "session": 2},
        {"t": 9, "ev": "cmd", "session": 4, "cmd": "KEY", "queue": "bb", "via": "direct"},
        {"t": 10, "ev": "msg", "session": 3, "queue": "aa"},
    ]
    view = load(events)
    aa = view.queues["aa"]
    assert aa.intervals.tolist() == [[0, 10]]  # [0,4] u [2,8] u [6, end]
    assert aa.closes.tolist() == [4, 8]
    assert view.queues["bb"].intervals.tolist() == [[0, 10]]  # session 4: no open, no close
    assert aa.times("GET").tolist() == [3] and aa.times("DEL").tolist() == []


def test_lines_in_any_order_are_sorted():
    events = hm.events()
    view = load(list(reversed(events)), hm.truth())
    assert view.queue("q1").closes.tolist() == [T0 + 50, T0 + 100]
    assert view.queue("q1").intervals.tolist() == [[T0, T0 + 100]]


GOOD = [
    '{"t": 1.0, "ev": "open", "session": 1}',
    '{"t": 1.5, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "ab12", "via": "direct"}',
]
BAD = {
    "not json": "{t: 1",
    "not an object": "[1, 2]",
    "no time": '{"ev": "open", "session": 1}',
    "time is a string": '{"t": "2", "ev": "open", "session": 1}',
    "time is a bool": '{"t": true, "ev": "open", "session": 1}',
    "time is NaN": '{"t": NaN, "ev": "open", "session": 1}',
    "unknown event": '{"t": 2, "ev": "bye", "session": 1}',
    "session is a string": '{"t": 2, "ev": "close", "session": "1"}',
    "no session": '{"t": 2, "ev": "close"}',
    "unknown command": '{"t": 2, "ev": "cmd", "session": 1, "cmd": "HELLO", "queue": null, "via": "direct"}',
    "no via": '{"t": 2, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "ab"}',
    "bad via": '{"t": 2, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "ab", "via": "tor"}',
    "forwarded SUB": '{"t": 2, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "ab", "via": "forward"}',
    "no queue": '{"t": 2, "ev": "cmd", "session": 1, "cmd": "SUB", "via": "direct"}',
    "queue not hex": '{"t": 2, "ev": "cmd", "session": 1, "cmd": "SUB", "queue": "xyz", "via": "direct"}',
    "msg without queue": '{"t": 2, "ev": "msg", "session": 1}',
    "ids without snd": '{"t": 2, "ev": "ids", "rid": "ab"}',
    "closed twice": '{"t": 2, "ev": "close", "session": 1}\n{"t": 3, "ev": "close", "session": 1}',
    "closed before opened": '{"t": 0.5, "ev": "close", "session": 1}',
    "opened twice": '{"t": 2, "ev": "open", "session": 1}',
    "rid with two snds": '{"t": 2, "ev": "ids", "rid": "ab", "snd": "cd"}\n{"t": 3, "ev": "ids", "rid": "ab", "snd": "ef"}',
}


@pytest.mark.parametrize("problem", BAD)
def test_garbage_is_refused_naming_its_line(problem, tmp_path):
    bad_lines = BAD[problem].split("\n")
    bad_line = len(GOOD) + 1 + 1 + len(bad_lines) - 1  # after the good lines and a blank one
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join([*GOOD, "", *bad_lines]) + "\n")
    with pytest.raises(TraceError) as err:
        load(path)
    assert err.value.line == bad_line, str(err.value)
    assert f"trace line {bad_line}:" in str(err.value)
    # The same from an iterable of strings.
    with pytest.raises(TraceError) as err:
        load([*GOOD, "", *bad_lines])
    assert err.value.line == bad_line


def test_read_trace_returns_the_normalised_events():
    events = read_trace([*GOOD, '{"t": 2, "ev": "msg", "session": 1, "queue": "AB12"}'])
    assert [e["ev"] for e in events] == ["open", "cmd", "msg"]
    assert events[2]["queue"] == "ab12" and isinstance(events[0]["t"], float)


def test_an_iterable_of_dicts_is_numbered_by_item():
    events = [json.loads(line) for line in GOOD] + [{"t": 3, "ev": "cmd", "session": 1}]
    with pytest.raises(TraceError, match=r"trace line 3: 'cmd' must be one of"):
        load(events)


def test_truth_is_checked_and_must_agree_with_ids_events():
    truth = hm.truth()
    truth["queues"][0]["snd"] = "ff" * 8
    with pytest.raises(TruthError, match="'q1'.*disagree with the trace's ids"):
        load(hm.events(), truth)
    with pytest.raises(TruthError, match="reader"):
        load(hm.events(), {"queues": [{"name": "q", "rid": "ab", "snd": "cd", "writer": "x"}]})
    with pytest.raises(TruthError, match="hex"):
        load(hm.events(), {"queues": [{"name": "q", "rid": "zz", "snd": "cd", "reader": "a", "writer": "b"}]})
    with pytest.raises(TruthError, match="repeats"):
        row = {"rid": "ab", "snd": "cd", "reader": "a", "writer": "b"}
        load([], {"queues": [{"name": "q", **row}, {"name": "q", **row, "rid": "ef", "snd": "01"}]})
    with pytest.raises(TruthError, match="'queues' list"):
        load([], {"queue": []})


def test_truth_from_a_file_and_queues_the_trace_never_shows(tmp_path):
    path = tmp_path / "truth.json"
    truth = hm.truth()
    truth["queues"].append({"name": "q5", "rid": "dd" * 8, "snd": "ee" * 8, "reader": "C", "writer": "B"})
    path.write_text(json.dumps(truth))
    view = load(hm.events(), path)
    q5 = view.queue("q5")
    assert q5.conversation is None and len(q5.subs) == 0 and q5.intervals.shape == (0, 2)
    assert [q.name for q in view.labelled()] == ["q1", "q2", "q3", "q4", "q5"]
    assert np.array_equal(view.queue("q1").subs, [T0 + 1.0])
