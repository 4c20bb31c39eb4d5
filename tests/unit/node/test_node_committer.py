"""Group commit: one transaction per batch, one savepoint per operation."""

import asyncio
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from onionpost.node.committer import Committer
from onionpost.node.mailbox import Refused
from onionpost.node.sqlite_store import SQLiteQueueStore
from onionpost.node.store import QueueRecord
from onionpost.proto import Error, ErrorCode

pytestmark = pytest.mark.timeout(60)


def queue(n: int) -> QueueRecord:
    return QueueRecord(rid=bytes([n]) * 24, snd=bytes([n + 100]) * 24, rkey=b"k" * 32, skey=None, queue_key=b"q" * 32)


@pytest.fixture
def store(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    yield store
    store.close()


def test_failed_operations_are_undone_alone(store):
    committer = Committer(store)

    def refused():
        store.add_queue(queue(2))
        raise Refused(ErrorCode.QUOTA, "full")

    def crashing():
        store.add_queue(queue(3))
        raise KeyError("bug")

    results = committer.run_batch([lambda: store.add_queue(queue(1)), refused, crashing, lambda: store.add_queue(queue(4)) or "ok"])
    assert results[0] is None and results[3] == "ok"
    assert results[1] == Error("QUOTA", "full")
    assert isinstance(results[2], Error) and results[2].code == ErrorCode.INTERNAL
    assert store.queue_by_rid(queue(1).rid) and store.queue_by_rid(queue(4).rid)
    assert store.queue_by_rid(queue(2).rid) is None and store.queue_by_rid(queue(3).rid) is None


class CommitFails(SQLiteQueueStore):
    @contextmanager
    def transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        yield
        self._db.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")


def test_commit_failure_fails_the_whole_batch(tmp_path):
    store = CommitFails(tmp_path / "node.db")
    results = Committer(store).run_batch([lambda: store.add_queue(queue(1)), lambda: "fine"])
    assert all(isinstance(r, Error) and r.code == ErrorCode.INTERNAL for r in results)
    assert store.queue_by_rid(queue(1).rid) is None
    store.close()


async def test_operations_of_one_loop_turn_share_a_transaction(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    committer = Committer(store)
    batches = []
    original = committer.run_batch
    committer.run_batch = lambda ops: batches.append(len(ops)) or original(ops)
    answered = []
    for n in range(10):
        committer.submit(lambda n=n: store.add_queue(queue(n)) or n, answered.append)
    assert answered == []  # nothing answered before the commit
    await committer.call(lambda: None)
    assert answered == list(range(10))  # in submission order
    assert batches == [11]  # the ten and the awaited call: one transaction
    await committer.close()
    reopened = SQLiteQueueStore(tmp_path / "node.db")
    assert reopened.counts() == (10, 0)
    reopened.close()


async def test_closed_committer_answers_internal(tmp_path):
    committer = Committer(SQLiteQueueStore(tmp_path / "node.db"))
    await committer.close()
    result = await committer.call(lambda: "never")
    assert isinstance(result, Error) and result.code == ErrorCode.INTERNAL
    await asyncio.sleep(0)


async def test_close_twice_and_concurrently_closes_once(tmp_path):
    closes = []

    class Store(SQLiteQueueStore):
        def close(self):
            closes.append(1)
            super().close()

    committer = Committer(Store(tmp_path / "node.db"))
    answered = []
    committer.submit(lambda: "pending", answered.append)
    await asyncio.wait_for(asyncio.gather(committer.close(), committer.close()), 10)
    await asyncio.wait_for(committer.close(), 10)  # before: a second close waited forever on a stopped thread
    assert answered == ["pending"] and closes == [1]


async def test_run_alone_checkpoints_outside_a_transaction(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    committer = Committer(store)
    await committer.call(lambda: store.add_queue(queue(1)))
    await committer.call(lambda: store.delete_queue(queue(1).rid))
    wal = tmp_path / "node.db-wal"
    assert wal.stat().st_size > 0
    await committer.run_alone(store.checkpoint)
    assert wal.stat().st_size == 0
    assert queue(1).rid not in (tmp_path / "node.db").read_bytes()
    await committer.close()


class CountingStore(SQLiteQueueStore):
    savepoints = 0

    @contextmanager
    def savepoint(self):
        self.savepoints += 1
        with super().savepoint():
            yield


def test_operations_that_write_nothing_when_refused_need_no_savepoint(tmp_path):
    store = CountingStore(tmp_path / "node.db")

    def refused_before_writing():
        raise Refused(ErrorCode.QUOTA, "full")

    results = Committer(store).run_batch([lambda: store.add_queue(queue(1)), refused_before_writing, lambda: "ok"])
    assert results == [None, Error("QUOTA", "full"), "ok"]
    assert store.savepoints == 0
    assert store.queue_by_rid(queue(1).rid) is not None
    store.close()


def test_a_write_before_a_refusal_reruns_the_batch_with_savepoints(tmp_path):
    store = CountingStore(tmp_path / "node.db")

    def refused_after_writing():
        store.add_queue(queue(2))
        raise Refused(ErrorCode.QUOTA, "full")

    results = Committer(store).run_batch([lambda: store.add_queue(queue(1)) or "one", refused_after_writing])
    assert results == ["one", Error("QUOTA", "full")]
    assert store.savepoints == 2
    assert store.queue_by_rid(queue(1).rid) is not None and store.queue_by_rid(queue(2).rid) is None
    store.close()


async def test_full_committer_makes_sessions_wait_for_room(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    committer = Committer(store, max_waiting=4, inline_batch=0)  # batches in the store thread
    release = threading.Event()
    committer.submit(lambda: release.wait(10), lambda result: None)
    await asyncio.sleep(0.1)  # the store thread is now busy with that batch
    answered = []
    for n in range(4):
        committer.submit(lambda n=n: n, answered.append)
    assert committer.full
    waiting = asyncio.get_running_loop().create_task(committer.room())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, 10)  # the drainer took the next batch: room again
    assert not committer.full
    await committer.call(lambda: None)
    assert answered == [0, 1, 2, 3]
    await committer.close()


async def test_small_batches_run_in_the_loop_large_ones_in_the_store_thread(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    committer = Committer(store, inline_batch=2)
    small = await asyncio.gather(*(committer.call(threading.current_thread) for _ in range(2)))
    large = await asyncio.gather(*(committer.call(threading.current_thread) for _ in range(3)))
    assert set(small) == {threading.current_thread()}
    assert len(set(large)) == 1 and large[0] is not threading.current_thread()
    await committer.close()


async def test_run_alone_waits_for_the_running_batch(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    committer = Committer(store, inline_batch=0)
    order = []
    release = threading.Event()
    committer.submit(lambda: release.wait(10) and order.append("batch"), lambda result: None)
    await asyncio.sleep(0.05)  # the batch is running in the store thread
    alone = asyncio.get_running_loop().create_task(committer.run_alone(lambda: order.append("alone")))
    await asyncio.sleep(0.05)
    assert order == []
    release.set()
    await asyncio.wait_for(alone, 10)
    assert order == ["batch", "alone"]
    await committer.close()


async def test_a_slow_disk_sends_even_small_batches_to_the_store_thread(tmp_path):
    store = SQLiteQueueStore(tmp_path / "node.db")
    committer = Committer(store, inline_batch=2)
    loop_thread = threading.current_thread()

    def slow_commit():
        time.sleep(0.01)  # an fsync of 10 ms, as on a spinning disk
        return threading.current_thread()

    assert await committer.call(slow_commit) is loop_thread  # nothing measured yet: in the loop
    assert await committer.call(threading.current_thread) is not loop_thread  # too slow: the thread
    assert await committer.call(threading.current_thread) is loop_thread  # that one was fast again
    await committer.close()
    store.close()
