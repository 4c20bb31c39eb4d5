"""Mailbox semantics on a real SQLite store with an injected clock."""

import os
import time

import pytest

from onionpost.node.config import NodeConfig
from onionpost.node.mailbox import Acked, Mailbox, Refused, Relayed, Stored, Subscribed
from onionpost.node.sqlite_store import SQLiteQueueStore
from onionpost.proto import (
    Ack,
    Delete,
    Error,
    ErrorCode,
    Get,
    Message,
    New,
    NoMessage,
    Ok,
    QueueIds,
    SecureQueue,
    Send,
    Subscribe,
    Suspend,
    Transmission,
)
from onionpost.proto import crypto, delivery, forward
from onionpost.proto.frames import encode_body

pytestmark = pytest.mark.timeout(60)

TTL = 1000


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def transmission(command, queue=None, key=None, session=b"S" * 32) -> Transmission:
    corr = os.urandom(24)
    body = encode_body(session, corr, queue, command)
    signature = crypto.sign(key, crypto.COMMAND_DOMAIN, body) if key else b""
    return Transmission(signature, body, session, corr, queue, command)


class Recipient:
    """Creates and drives one queue through a mailbox."""

    def __init__(self, mailbox: Mailbox, *, secure: bool = True, akey=None):
        self.mailbox = mailbox
        self.rkey, self.rsecret = crypto.signing_keypair()
        dh_public, dh_secret = crypto.dh_keypair()
        ids = mailbox.new(transmission(New(rkey=self.rkey, dhkey=dh_public, akey=akey), key=self.rsecret))
        assert isinstance(ids, QueueIds)
        self.rid, self.snd = ids.rid, ids.snd
        self.queue_key = crypto.queue_secret(dh_secret, ids.dhkey)
        self.skey = self.ssecret = None
        if secure:
            self.skey, self.ssecret = crypto.signing_keypair()
            assert isinstance(self.do(SecureQueue(skey=self.skey)), Ok)

    def do(self, command, key="recipient"):
        return self.mailbox_call(command, self.rid, self.rsecret if key == "recipient" else key)

    def mailbox_call(self, command, queue, key):
        method = {
            SecureQueue: self.mailbox.secure,
            Subscribe: self.mailbox.subscribe,
            Get: self.mailbox.get,
            Ack: self.mailbox.ack,
            Suspend: self.mailbox.suspend,
            Delete: self.mailbox.delete,
            Send: self.mailbox.send,
        }[type(command)]
        return method(transmission(command, queue, key))

    def send(self, body: bytes, key="sender"):
        return self.mailbox.send(transmission(Send(body=body), self.snd, self.ssecret if key == "sender" else key))

    def body(self, message: Message) -> bytes:
        return delivery.open_message(self.queue_key, message.box)[1]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    yield store
    store.close()


@pytest.fixture
def make_mailbox(store, clock):
    def make(**config):
        config.setdefault("ttl", TTL)
        return Mailbox(store, NodeConfig(**config), clock=clock)

    return make


@pytest.fixture
def mailbox(make_mailbox):
    return make_mailbox()


def refused(code: ErrorCode, call, *args):
    with pytest.raises(Refused) as info:
        call(*args)
    assert info.value.code == code, info.value
    return info.value


def test_unusable_keys_are_syntax_errors(mailbox):
    """Item 11: NEW with an all-zero (or other small-order) rkey or dhkey, and KEY with such an skey, are SYNTAX."""
    small_order = b"\x01" + bytes(31)
    for bad in (bytes(32), small_order):
        refused(ErrorCode.SYNTAX, mailbox.new, transmission(New(rkey=bad, dhkey=crypto.dh_keypair()[0]), key=None))
        rkey, rsecret = crypto.signing_keypair()
        refused(ErrorCode.SYNTAX, mailbox.new, transmission(New(rkey=rkey, dhkey=bad), key=rsecret))
    r = Recipient(mailbox)
    for bad in (bytes(32), small_order):
        refused(ErrorCode.SYNTAX, r.do, SecureQueue(skey=bad))


def test_new_needs_the_rkey_signature(mailbox):
    rkey, _ = crypto.signing_keypair()
    _, other = crypto.signing_keypair()
    refused(ErrorCode.AUTH, mailbox.new, transmission(New(rkey=rkey, dhkey=crypto.dh_keypair()[0]), key=other))
    refused(ErrorCode.AUTH, mailbox.new, transmission(New(rkey=rkey, dhkey=crypto.dh_keypair()[0])))
    rkey, rsecret = crypto.signing_keypair()
    refused(ErrorCode.SYNTAX, mailbox.new, transmission(New(rkey=rkey, dhkey=bytes(32)), key=rsecret))  # low-order key
    assert mailbox.store.counts() == (0, 0)


def test_new_creates_unrelated_ids_and_a_shared_queue_key(mailbox):
    r = Recipient(mailbox, secure=False)
    assert len(r.rid) == len(r.snd) == 24 and r.rid != r.snd
    record = mailbox.store.queue_by_rid(r.rid)
    assert record.queue_key == r.queue_key and record.skey is None and record.rkey == r.rkey
    assert mailbox.store.queue_by_sender(r.snd) == record


def test_access_keys(make_mailbox):
    mailbox = make_mailbox(access_keys=("alpha", "beta"))
    for akey in (None, "", "alph", "alpha2", "gamma"):
        with pytest.raises(Refused) as info:
            Recipient(mailbox, akey=akey)
        assert info.value.code == ErrorCode.ACCESS
    Recipient(mailbox, akey="alpha")
    r = Recipient(mailbox, akey="beta")
    assert isinstance(r.send(b"no access key to send"), Stored)


def test_secure_once(mailbox):
    r = Recipient(mailbox, secure=False)
    skey, ssecret = crypto.signing_keypair()
    assert isinstance(r.do(SecureQueue(skey=skey)), Ok)
    assert isinstance(r.do(SecureQueue(skey=skey)), Ok)  # retry of the same key
    refused(ErrorCode.SECURED, r.do, SecureQueue(skey=crypto.signing_keypair()[0]))
    _, stranger = crypto.signing_keypair()
    refused(ErrorCode.AUTH, r.do, SecureQueue(skey=skey), stranger)
    assert mailbox.store.queue_by_rid(r.rid).skey == skey


def test_unsecured_limit_then_signed_only(make_mailbox):
    mailbox = make_mailbox(unsecured_limit=3)
    r = Recipient(mailbox, secure=False)
    _, ssecret = crypto.signing_keypair()
    refused(ErrorCode.AUTH, r.send, b"signed", ssecret)
    for i in range(3):
        assert isinstance(r.send(b"%d" % i, None), Stored)
    refused(ErrorCode.LIMIT, r.send, b"4", None)
    assert mailbox.store.queue_by_rid(r.rid).unsigned_sends == 3
    skey, ssecret = crypto.signing_keypair()
    r.do(SecureQueue(skey=skey))
    refused(ErrorCode.AUTH, r.send, b"unsigned", None)
    refused(ErrorCode.AUTH, r.send, b"wrong key", crypto.signing_keypair()[1])
    assert isinstance(r.send(b"signed", ssecret), Stored)


def test_quota_counts_live_messages(make_mailbox, clock):
    mailbox = make_mailbox(quota=3)
    r = Recipient(mailbox)
    for i in range(3):
        r.send(b"%d" % i)
    refused(ErrorCode.QUOTA, r.send, b"full")
    oldest = r.do(Get())
    assert isinstance(r.do(Ack(mid=oldest.mid)), Acked)
    assert isinstance(r.send(b"room"), Stored)
    refused(ErrorCode.QUOTA, r.send, b"full again")
    clock.now += TTL + 1
    assert isinstance(r.send(b"after expiry"), Stored)


def test_ttl_expiry_filters_and_sweeps(mailbox, store, clock):
    r = Recipient(mailbox)
    r.send(b"old")
    clock.now += TTL / 2
    r.send(b"young")
    clock.now += TTL / 2 + 1
    assert r.body(r.do(Get())) == b"young"
    assert r.body(r.do(Subscribe()).message) == b"young"
    assert store.counts() == (1, 2)
    assert mailbox.sweep() == 1
    assert store.counts() == (1, 1)
    clock.now += TTL
    assert isinstance(r.do(Get()), NoMessage)
    assert mailbox.sweep() == 1 and store.counts() == (1, 0)


def test_ack_only_the_oldest_in_order(mailbox):
    r = Recipient(mailbox)
    for body in (b"one", b"two", b"three"):
        r.send(body)
    first = r.do(Get())
    assert r.body(first) == b"one"
    second = mailbox.store.oldest_message(r.rid, 0)
    assert second.mid == first.mid
    wrong = r.do(Ack(mid=b"\x00" * 16))
    assert wrong == Acked(False, first)
    acked = r.do(Ack(mid=first.mid))
    assert acked.ok and r.body(acked.next) == b"two"
    assert r.do(Ack(mid=first.mid)).ok is False  # already gone
    acked = r.do(Ack(mid=acked.next.mid))
    assert r.body(acked.next) == b"three"
    acked = r.do(Ack(mid=acked.next.mid))
    assert acked == Acked(True, None)
    assert isinstance(r.do(Get()), NoMessage)


def test_message_ids_are_random_and_boxes_differ_from_bodies(mailbox):
    r = Recipient(mailbox)
    stored = [r.send(b"same body") for _ in range(3)]
    mids = {s.message.mid for s in stored}
    boxes = {s.message.box for s in stored}
    assert len(mids) == 3 and len(boxes) == 3
    for s in stored:
        assert s.rid == r.rid and b"same body" not in s.message.box
        ts, body = delivery.open_message(r.queue_key, s.message.box)
        assert body == b"same body" and ts == int(mailbox.clock())


def test_suspend_refuses_sends_but_not_the_recipient(mailbox):
    r = Recipient(mailbox)
    r.send(b"kept")
    assert isinstance(r.do(Suspend()), Ok)
    assert isinstance(r.do(Suspend()), Ok)
    refused(ErrorCode.SUSPENDED, r.send, b"refused")
    refused(ErrorCode.AUTH, r.send, b"unsigned: the signature is checked first", None)
    got = r.do(Get())
    assert r.body(got) == b"kept"
    assert isinstance(r.do(Subscribe()), Subscribed)
    assert r.do(Ack(mid=got.mid)).ok
    assert isinstance(r.do(Delete()), Ok)


def test_unknown_queues_and_wrong_keys(mailbox):
    r = Recipient(mailbox)
    for command in (SecureQueue(skey=crypto.signing_keypair()[0]), Subscribe(), Get(), Ack(mid=b"x"), Suspend(), Delete()):
        refused(ErrorCode.NO_QUEUE, r.mailbox_call, command, os.urandom(24), r.rsecret)
        refused(ErrorCode.NO_QUEUE, r.mailbox_call, command, r.snd, r.rsecret)  # a sender id is not a recipient id
        refused(ErrorCode.AUTH, r.mailbox_call, command, r.rid, r.ssecret)
        refused(ErrorCode.AUTH, r.mailbox_call, command, r.rid, None)
    refused(ErrorCode.NO_QUEUE, r.mailbox_call, Send(body=b"x"), os.urandom(24), r.ssecret)
    refused(ErrorCode.NO_QUEUE, r.mailbox_call, Send(body=b"x"), r.rid, r.ssecret)


def test_delete_purges_rows_and_file_bytes(mailbox, store):
    keep = Recipient(mailbox)
    keep.send(b"other queue stays")
    r = Recipient(mailbox)
    boxes = [r.send(b"secret %d" % i).message.box for i in range(20)]
    record = store.queue_by_rid(r.rid)
    store.checkpoint()
    assert r.rid in store.path.read_bytes() and boxes[0][24:56] in store.path.read_bytes()  # the check below means something
    assert isinstance(r.do(Delete()), Ok)
    assert store.queue_by_rid(r.rid) is None and store.queue_by_sender(r.snd) is None
    assert store.counts() == (1, 1)
    refused(ErrorCode.NO_QUEUE, r.do, Get())
    refused(ErrorCode.NO_QUEUE, r.send, b"after delete")
    store.checkpoint()
    data = store.path.read_bytes()
    wal = store.path.with_name(store.path.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    for secret in [r.rid, r.snd, record.queue_key, record.rkey, record.skey, *(box[24:56] for box in boxes)]:
        assert secret not in data
    assert store.queue_by_rid(keep.rid) is not None


def test_acked_messages_leave_no_bytes_after_a_checkpoint(mailbox, store):
    r = Recipient(mailbox)
    boxes = [r.send(b"delivered %d" % i).message.box for i in range(4)]
    store.checkpoint()
    assert boxes[0][24:56] in store.path.read_bytes()  # the check below means something
    for box in boxes:
        message = r.do(Get())
        assert message.box == box and r.do(Ack(mid=message.mid)).ok
    store.checkpoint()
    data = store.path.read_bytes()
    for box in boxes:
        for start in range(24, len(box) - 32, 4096):  # every page the box spanned
            assert box[start : start + 32] not in data


def test_relay_send_spends_the_envelope_once(mailbox, store, clock):
    identity_public, identity_secret = crypto.signing_keypair()
    r = Recipient(mailbox)
    envelope, response_key = forward.seal_send(identity_public, r.snd, Send(body=b"forwarded"), r.ssecret, int(clock()))
    opened = forward.open_envelope(identity_secret, envelope, int(clock()))
    result = mailbox.relay_send(opened)
    assert isinstance(result, Relayed) and isinstance(result.response, Ok) and result.stored.rid == r.rid
    replayed = mailbox.relay_send(opened)  # answered inside the sealed answer: the envelope opened
    assert replayed.response.code == ErrorCode.ENVELOPE and replayed.stored is None
    assert store.counts() == (1, 1)

    # A refused inner SEND still spends the envelope (no later replay can succeed).
    r.do(Suspend())
    envelope, _ = forward.seal_send(identity_public, r.snd, Send(body=b"refused"), r.ssecret, int(clock()))
    opened = forward.open_envelope(identity_secret, envelope, int(clock()))
    result = mailbox.relay_send(opened)
    assert isinstance(result.response, Error) and result.response.code == ErrorCode.SUSPENDED and result.stored is None
    assert mailbox.relay_send(opened).response.code == ErrorCode.ENVELOPE

    # Seen keys expire after twice the envelope age.
    clock.now += 2 * forward.MAX_ENVELOPE_AGE + 1
    mailbox.sweep()
    assert store.remember_envelope(opened.ephemeral_key, int(time.time())) is True
