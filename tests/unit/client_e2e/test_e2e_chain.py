"""Application message chain: sequence numbers and previous-message hashes."""

from __future__ import annotations

import pytest

from onionpost.client.e2e import (
    GENESIS_HASH,
    ChainError,
    ReceiverChain,
    SenderChain,
    StateError,
    Verdict,
    classify,
    decode_message,
    encode_message,
    message_hash,
)
from onionpost.client.e2e.chain import MAX_TRACKED_MISSING


def make(n, sender=None):
    sender = sender or SenderChain()
    out = []
    for i in range(n):
        sender, m = sender.next_message(b"body %d" % i)
        out.append(m)
    return sender, out


def test_in_order_messages_are_ok():
    _, msgs = make(5)
    r = ReceiverChain()
    for i, m in enumerate(msgs):
        r, c, body = r.receive(m)
        assert c.verdict is Verdict.OK
        assert body == b"body %d" % i
    assert r.last_seq == 5


def test_gap_reports_missing_count_then_late_message_is_reordered():
    _, msgs = make(6)
    r = ReceiverChain()
    r, c, _ = r.receive(msgs[0])
    r, c, _ = r.receive(msgs[4])  # 2, 3, 4 missing
    assert c.verdict is Verdict.GAP and c.missing == 3
    r, c, _ = r.receive(msgs[2])
    assert c.verdict is Verdict.REORDERED
    r, c, _ = r.receive(msgs[3])  # its hash was known from message 5's prev_hash
    assert c.verdict is Verdict.REORDERED
    r, c, _ = r.receive(msgs[1])  # verified through message 3's prev_hash
    assert c.verdict is Verdict.REORDERED
    assert r.missing == ()
    r, c, _ = r.receive(msgs[5])
    assert c.verdict is Verdict.OK


def test_duplicates_detected():
    _, msgs = make(3)
    r = ReceiverChain()
    for m in msgs:
        r, _, _ = r.receive(m)
    r2, c, _ = r.receive(msgs[2])
    assert c.verdict is Verdict.DUPLICATE and r2 == r
    r2, c, _ = r.receive(msgs[0])
    assert c.verdict is Verdict.DUPLICATE and r2 == r


def test_injected_message_has_bad_hash():
    _, msgs = make(3)
    r = ReceiverChain()
    r, _, _ = r.receive(msgs[0])
    forged = encode_message(2, b"\x11" * 32, b"injected")
    r2, c, _ = r.receive(forged)
    assert c.verdict is Verdict.BAD_HASH and r2 == r
    r, c, _ = r.receive(msgs[1])
    assert c.verdict is Verdict.OK


def test_tampered_body_has_bad_hash_when_successor_arrives():
    _, msgs = make(3)
    r = ReceiverChain()
    r, _, _ = r.receive(msgs[0])
    tampered = msgs[1][:-1] + b"X"
    r, c, _ = r.receive(tampered)
    assert c.verdict is Verdict.OK  # cannot be detected on its own...
    r, c, _ = r.receive(msgs[2])
    assert c.verdict is Verdict.BAD_HASH  # ...but the next message does not chain to it


def test_late_message_that_does_not_match_is_bad_hash():
    _, msgs = make(3)
    r = ReceiverChain()
    r, _, _ = r.receive(msgs[0])
    r, c, _ = r.receive(msgs[2])
    assert c.verdict is Verdict.GAP
    forged = encode_message(2, message_hash(1, GENESIS_HASH, b"body 0"), b"other")  # chains fine, wrong body
    r2, c, _ = r.receive(forged)
    assert c.verdict is Verdict.BAD_HASH and r2 == r
    r, c, _ = r.receive(msgs[1])
    assert c.verdict is Verdict.REORDERED


def test_two_different_messages_with_the_same_number():
    _, msgs = make(2)
    r = ReceiverChain()
    r, _, _ = r.receive(msgs[0])
    r, _, _ = r.receive(msgs[1])
    _, c, _ = r.receive(encode_message(2, GENESIS_HASH, b"fork"))
    assert c.verdict is Verdict.BAD_HASH


def test_classify_directly():
    h1 = message_hash(1, GENESIS_HASH, b"a")
    assert classify(0, GENESIS_HASH, 1, GENESIS_HASH, h1).verdict is Verdict.OK
    assert classify(0, GENESIS_HASH, 1, b"\x01" * 32, h1).verdict is Verdict.BAD_HASH
    gap = classify(1, h1, 5, b"\x02" * 32, b"\x03" * 32)
    assert gap.verdict is Verdict.GAP and gap.missing == 3
    assert classify(1, h1, 1, GENESIS_HASH, h1).verdict is Verdict.DUPLICATE
    assert classify(1, h1, 1, GENESIS_HASH, b"\x04" * 32).verdict is Verdict.BAD_HASH
    assert classify(9, h1, 3, GENESIS_HASH, h1).verdict is Verdict.REORDERED


def test_huge_gap_tracks_a_bounded_number_of_missing():
    r = ReceiverChain()
    r, c, _ = r.receive(encode_message(10**12, GENESIS_HASH, b"far"))
    assert c.verdict is Verdict.GAP and c.missing == 10**12 - 1
    assert len(r.missing) == MAX_TRACKED_MISSING


def test_state_round_trip():
    s, msgs = make(4)
    assert SenderChain.from_bytes(s.to_bytes()) == s
    r = ReceiverChain()
    r, _, _ = r.receive(msgs[0])
    r, _, _ = r.receive(msgs[3])
    restored = ReceiverChain.from_bytes(r.to_bytes())
    assert restored == r
    restored, c, _ = restored.receive(msgs[1])
    assert c.verdict is Verdict.REORDERED
    with pytest.raises(StateError):
        ReceiverChain.from_bytes(s.to_bytes())
    with pytest.raises(StateError):
        SenderChain.from_bytes(b"\x00garbage")


def test_malformed_chain_messages():
    with pytest.raises(ChainError, match="shorter"):
        decode_message(b"short")
    with pytest.raises(ChainError, match="start at 1"):
        decode_message(bytes(40))
    link, body = decode_message(encode_message(7, b"\x01" * 32, b""))
    assert (link.seq, link.prev_hash, body) == (7, b"\x01" * 32, b"")
