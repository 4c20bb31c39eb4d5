"""A four-queue trace small enough to score by hand (shared by the lab tests).

People A, B, C; conversation c1 between A and B (q1: A reads, B writes; q2:
the reverse), c2 between A and C (q3: A reads, C writes; q4: the reverse).
Times are offsets from T0, a realistic unix time, to catch precision slips.

    session 1 (A) open 0 .. close 100     SUB q1 @1.00, SUB q3 @1.05, ACK q1 @20.1, SEND q2 @20.3
    session 2 (B) open 0 .. close 50      SUB q2 @2.0, SEND q1 @20.0
    session 3 (C) open 10 .. close 100.05 SUB q4 @10.5
    session 9 (another relay, no open/close)  SEND q4 @30 via forward
    session 2 also sends to a snd no one can join (an unlabelled queue)

q1 and q2 are joined by ids events, q3 and q4 only through the truth.
"""

T0 = 1_700_000_000.0
RID = {"q1": "a1" * 8, "q2": "a2" * 8, "q3": "a3" * 8, "q4": "a4" * 8}
SND = {"q1": "b1" * 8, "q2": "b2" * 8, "q3": "b3" * 8, "q4": "b4" * 8}
STRANGER = "cc" * 8


def cmd(t: float, session: int, command: str, queue: str | None, via: str = "direct") -> dict:
    return {"t": T0 + t, "ev": "cmd", "session": session, "cmd": command, "queue": queue, "via": via}


def events() -> list[dict]:
    return [
        {"t": T0, "ev": "ids", "rid": RID["q1"], "snd": SND["q1"]},
        {"t": T0, "ev": "ids", "rid": RID["q2"], "snd": SND["q2"]},
        {"t": T0, "ev": "open", "session": 1},
        {"t": T0, "ev": "open", "session": 2},
        cmd(1.00, 1, "SUB", RID["q1"]),
        cmd(1.05, 1, "SUB", RID["q3"]),
        cmd(2.0, 2, "SUB", RID["q2"]),
        cmd(5.0, 1, "PING", None),
        {"t": T0 + 10, "ev": "open", "session": 3},
        cmd(10.5, 3, "SUB", RID["q4"]),
        cmd(20.0, 2, "SEND", SND["q1"]),
        {"t": T0 + 20.01, "ev": "msg", "session": 1, "queue": RID["q1"]},
        cmd(20.1, 1, "ACK", RID["q1"]),
        cmd(20.3, 1, "SEND", SND["q2"]),
        cmd(30.0, 9, "SEND", SND["q4"], via="forward"),
        cmd(40.0, 2, "SEND", STRANGER),
        {"t": T0 + 50, "ev": "close", "session": 2},
        {"t": T0 + 100, "ev": "close", "session": 1},
        {"t": T0 + 100.05, "ev": "close", "session": 3},
    ]


def truth() -> dict:
    people = {"q1": ("A", "B", "c1"), "q2": ("B", "A", "c1"), "q3": ("A", "C", "c2"), "q4": ("C", "A", "c2")}
    return {"queues": [
        {"name": name, "rid": RID[name], "snd": SND[name], "reader": r, "writer": w, "conversation": c}
        for name, (r, w, c) in people.items()
    ]}


# Pairs in evaluation order: (q1,q2) (q1,q3) (q1,q4) (q2,q3) (q2,q4) (q3,q4).
PAIRS = [("q1", "q2"), ("q1", "q3"), ("q1", "q4"), ("q2", "q3"), ("q2", "q4"), ("q3", "q4")]
SAME_PERSON = [False, True, False, False, False, False]
SAME_CONVERSATION = [True, False, False, False, False, True]


def _near(gap: float, delta: float = 0.1) -> float:
    return 1 / (1 + gap / delta)


# Worked out by hand from the timeline above (see each signal's definition).
EXPECTED = {
    # SUBs @1.00 (q1), @2.0 (q2), @1.05 (q3), @10.5 (q4): only q1/q3 within 0.1 s.
    "co_subscription": [0, 1, 0, 0, 0, 0],
    "co_subscription_window": [_near(1.0), _near(0.05), _near(9.5), _near(0.95), _near(8.5), _near(9.45)],
    # Closes of carrying sessions: q1 {50, 100}, q2 {50, 100}, q3 {100}, q4 {100.05}
    # (q4's forwarded SEND does not make session 9 carry it).
    "co_closing": [1, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1],
    "co_closing_window": [1, 1, _near(0.05), 1, _near(0.05), _near(0.05)],
    # Sessions reading each queue: q1 {1}, q2 {2}, q3 {1}, q4 {3} (SENDs do not count).
    "co_session": [0, 1, 0, 0, 0, 0],
    # q1, q2, q3 carried over [0, 100]; q4 over [10, 100.05].
    "online_overlap": [1, 1, 90 / 100.05, 1, 90 / 100.05, 90 / 100.05],
    # Read only: q1 and q3 over session 1 [0, 100], q2 over session 2 [0, 50], q4 over session 3 [10, 100.05].
    "reader_overlap": [50 / 100, 1, 90 / 100.05, 50 / 100, 40 / 100.05, 90 / 100.05],
    # Written (direct SENDs only): q1 over session 2 [0, 50], q2 over session 1 [0, 100]; q3, q4 never.
    # (q1,q2): q1 read over all of q2's writing, q2 over all of q1's: (1 + 1) / 2; (q1,q3): q3 read
    # over all of q1's writing: (0 + 1) / 2; (q1,q4): q4 read over [10, 50] of q1's [0, 50]: (0 + 0.8) / 2;
    # (q2,q3): (0 + 1) / 2; (q2,q4): q4 read over [10, 100] of q2's [0, 100]: (0 + 0.9) / 2; (q3,q4): 0.
    "read_write_overlap": [1, 0.5, 0.4, 0.5, 0.45, 0],
    # The one ACK (q1 @20.1) is followed by q2's SEND @20.3.
    "ack_send": [1, 0, 0, 0, 0, 0],
    # SENDs: q1 @20.0, q2 @20.3, q4 @30 (forwarded); q3 none.
    "send_send": [1, 0, 1, 0, 1, 0],
}
