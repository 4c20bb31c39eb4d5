"""What purging costs: store time per message (SEND then ACK, 15 KB boxes) under each way of
getting deleted rows out of every file of the node; and what a rewrite in key order costs.

    python -m bench.purge [--seconds S] [--dir DIR] [--rewrite-queues 10000,100000]

Modes: ``none`` (SQLite's own checkpoints only: deleted rows stay in the WAL until it wraps),
``interval`` (the node's choice: ``wal_checkpoint(TRUNCATE)`` at most every ``PURGE_DELAY``
seconds after a deletion), ``each commit`` (a TRUNCATE checkpoint after every transaction:
purged at once) and ``rollback journal`` (``journal_mode=TRUNCATE``: the journal is emptied at
every commit, purged at once). Each runs with one message per transaction (light load) and 32
(group commit under load). Prints microseconds per message and the longest time a deleted row
stayed in a file. The directory should be on the disk the node uses (fsyncs are the cost).

Then the time of ``QueueStore.rewrite`` (VACUUM in key order and a WAL truncation, which the
node runs every ``rewrite_interval`` so the file's layout keeps no arrival order) for stores
of N queues and 1,000 stored 15 KB messages: the node answers no command meanwhile.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from onionpost.node.server import PURGE_DELAY
from onionpost.node.sqlite_store import SQLiteQueueStore
from onionpost.node.store import QueueRecord

BOX = 15232 + 40


def run(directory: Path, mode: str, batch: int, seconds: float) -> tuple[float, float]:
    path = directory / f"purge-{mode.replace(' ', '-')}-{batch}.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = SQLiteQueueStore(path)
    if mode == "rollback journal":
        store._db.execute("PRAGMA journal_mode=TRUNCATE")  # noqa: SLF001 (a bench of the alternative)
    rids = [os.urandom(24) for _ in range(16)]
    with store.transaction():
        for rid in rids:
            store.add_queue(QueueRecord(rid, os.urandom(24), os.urandom(32), os.urandom(32), os.urandom(32)))
    now = int(time.time())
    last_purge = time.perf_counter()
    deleted_since: float | None = None
    longest = 0.0
    started = time.perf_counter()
    messages = 0
    while time.perf_counter() - started < seconds:
        start, count = messages, batch
        messages += count
        with store.transaction():
            for i in range(count):
                store.add_message(rids[(start + i) % len(rids)], os.urandom(16), now, os.urandom(BOX))
        with store.transaction():
            for i in range(count):
                rid = rids[(start + i) % len(rids)]
                oldest = store.oldest_message(rid, 0)
                store.delete_oldest(rid, 0, oldest.mid)
        clock = time.perf_counter()
        deleted_since = deleted_since or clock
        if mode == "each commit" or (mode == "interval" and clock - last_purge >= PURGE_DELAY):
            store.checkpoint()
            longest = max(longest, time.perf_counter() - deleted_since)
            last_purge, deleted_since = time.perf_counter(), None
    elapsed = time.perf_counter() - started
    if mode == "rollback journal":
        longest = 0.0
    elif mode == "none":
        longest = float("inf")
    store.close()
    return elapsed / messages * 1e6, longest


def rewrite_seconds(directory: Path, queues: int) -> tuple[float, int]:
    path = directory / f"rewrite-{queues}.db"
    store = SQLiteQueueStore(path)
    rids = []
    with store.transaction():
        for _ in range(queues):
            rid = os.urandom(24)
            rids.append(rid)
            store.add_queue(QueueRecord(rid, os.urandom(24), os.urandom(32), os.urandom(32), os.urandom(32)))
        for i in range(1000):
            store.add_message(rids[i % len(rids)], os.urandom(16), int(time.time()), os.urandom(BOX))
    store.checkpoint()
    started = time.perf_counter()
    store.rewrite()
    elapsed = time.perf_counter() - started
    size = path.stat().st_size
    store.close()
    return elapsed, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per mode and batch size")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--rewrite-queues", default="10000,100000", help="store sizes for the rewrite timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"messages of {BOX} bytes, SEND then ACK, {args.seconds:g} s per line; store only (no crypto, no network)")
        print(f"{'mode':<18} {'per txn':>8} {'µs/msg':>9} {'vs none':>8} {'deleted data stays':>20}")
        for batch in (1, 32):
            baseline = None
            for mode in ("none", "interval", "each commit", "rollback journal"):
                micros, longest = run(Path(tmp), mode, batch, args.seconds)
                baseline = baseline or micros
                stays = "until the WAL wraps" if longest == float("inf") else f"≤ {longest * 1000:.0f} ms"
                print(f"{mode:<18} {batch:>8} {micros:>9.0f} {micros / baseline:>7.2f}× {stays:>20}")
        print("\nrewrite in key order (VACUUM + WAL truncation), with 1,000 stored 15 KB messages:")
        for queues in (int(n) for n in args.rewrite_queues.split(",") if n):
            seconds, size = rewrite_seconds(Path(tmp), queues)
            print(f"{queues:>9} queues: {seconds * 1000:8.0f} ms ({size / 1e6:.1f} MB file)")


if __name__ == "__main__":
    main()
