"""The SQLite ``QueueStore`` (the default: embedded, zero setup): ``node.db`` in the data directory.

What is stored is exactly docs/protocol/relay.md, "Model": per queue the two
ids, the two auth keys, the queue key, the status and the unsigned-send count;
per message its id, receive time, sealed box and its number within its queue
(no counter across queues). Tables keyed by random ids are WITHOUT ROWID, and
``rewrite`` (run periodically by the node) rebuilds the file in key order, so
the file's layout does not keep creation or arrival order either. Seen forwarding
envelope keys are kept until they expire ("Forwarding", step 2).

Queues live on disk: nothing is loaded at startup. The database uses WAL with
``synchronous=FULL`` (a committed transaction survives power loss) and
``secure_delete`` (freed pages are overwritten); the node truncates the WAL
soon after every deletion (``checkpoint``), so deleted rows leave the WAL too.
"""

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .store import QueueRecord, StoredMessage, StoreError

SCHEMA_VERSION = 2
"""1: messages ordered by one counter across all queues. 2: each queue's messages numbered on their own."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    rid BLOB PRIMARY KEY,
    snd BLOB NOT NULL UNIQUE,
    rkey BLOB NOT NULL,
    skey BLOB,
    queue_key BLOB NOT NULL,
    suspended INTEGER NOT NULL DEFAULT 0,
    unsigned_sends INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    rid BLOB NOT NULL,
    n INTEGER NOT NULL,
    mid BLOB NOT NULL,
    ts INTEGER NOT NULL,
    box BLOB NOT NULL,
    PRIMARY KEY (rid, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (ts);
CREATE TABLE IF NOT EXISTS seen_envelopes (
    epk BLOB PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent_tokens (
    key BLOB PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
"""

MIGRATE_1_TO_2 = """
CREATE TABLE messages_v2 (
    rid BLOB NOT NULL,
    n INTEGER NOT NULL,
    mid BLOB NOT NULL,
    ts INTEGER NOT NULL,
    box BLOB NOT NULL,
    PRIMARY KEY (rid, n)
) WITHOUT ROWID;
INSERT INTO messages_v2 (rid, n, mid, ts, box)
    SELECT rid, row_number() OVER (PARTITION BY rid ORDER BY seq), mid, ts, box FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
"""


class SQLiteQueueStore:
    """``QueueStore`` on one SQLite connection (used by one thread at a time)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise StoreError(f"{self.path} has schema version {version}; this node knows {SCHEMA_VERSION}")
            if version == 1:
                self._migrate_from_1()
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None

    def _migrate_from_1(self) -> None:
        """Renumber each queue's messages on their own (one transaction), then rewrite the file."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATE_1_TO_2.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self.rewrite()

    # --- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One durable transaction: committed (fsynced) on exit, rolled back on error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit inside a transaction: undone alone if it raises."""
        self._db.execute("SAVEPOINT op")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO op")
            self._db.execute("RELEASE op")
            raise
        self._db.execute("RELEASE op")

    def changes(self) -> int:
        """Rows inserted, updated or deleted on this connection so far (grows with every write)."""
        return self._db.total_changes

    # --- queues ------------------------------------------------------------------

    def add_queue(self, queue: QueueRecord) -> None:
        self._db.execute(
            "INSERT INTO queues (rid, snd, rkey, skey, queue_key, suspended, unsigned_sends) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (queue.rid, queue.snd, queue.rkey, queue.skey, queue.queue_key, int(queue.suspended), queue.unsigned_sends),
        )

    def queue_by_rid(self, rid: bytes) -> QueueRecord | None:
        return self._queue("rid", rid)

    def queue_by_sender(self, snd: bytes) -> QueueRecord | None:
        return self._queue("snd", snd)

    def _queue(self, column: str, value: bytes) -> QueueRecord | None:
        row = self._db.execute(
            f"SELECT rid, snd, rkey, skey, queue_key, suspended, unsigned_sends FROM queues WHERE {column} = ?", (value,)
        ).fetchone()
        if row is None:
            return None
        return QueueRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])

    def set_sender_key(self, rid: bytes, skey: bytes) -> None:
        self._db.execute("UPDATE queues SET skey = ? WHERE rid = ?", (skey, rid))

    def suspend(self, rid: bytes) -> None:
        self._db.execute("UPDATE queues SET suspended = 1 WHERE rid = ?", (rid,))

    def count_unsigned_send(self, rid: bytes) -> None:
        self._db.execute("UPDATE queues SET unsigned_sends = unsigned_sends + 1 WHERE rid = ?", (rid,))

    def delete_queue(self, rid: bytes) -> None:
        self._db.execute("DELETE FROM messages WHERE rid = ?", (rid,))
        self._db.execute("DELETE FROM queues WHERE rid = ?", (rid,))

    # --- messages -------------------------------------------------------------------

    def add_message(self, rid: bytes, mid: bytes, ts: int, box: bytes) -> None:
        """Append to the queue: numbered after its last message (1 for an empty queue), so only the queue's own order is kept."""
        self._db.execute(
            "INSERT INTO messages (rid, n, mid, ts, box) "
            "VALUES (?, (SELECT coalesce(max(n), 0) + 1 FROM messages WHERE rid = ?), ?, ?, ?)",
            (rid, rid, mid, ts, box),
        )

    def oldest_message(self, rid: bytes, since: int) -> StoredMessage | None:
        row = self._db.execute(
            "SELECT n, mid, ts, box FROM messages WHERE rid = ? AND ts >= ? ORDER BY n LIMIT 1", (rid, since)
        ).fetchone()
        return None if row is None else StoredMessage(*row)

    def delete_oldest(self, rid: bytes, since: int, mid: bytes) -> bool:
        """Delete the queue's oldest live message if its id is ``mid``; False if it is not, or there is none.

        One statement, and the box (15 KB of overflow pages) is not read.
        """
        cursor = self._db.execute(
            "DELETE FROM messages WHERE rid = ? AND mid = ? AND n = "
            "(SELECT n FROM messages WHERE rid = ? AND ts >= ? ORDER BY n LIMIT 1)",
            (rid, mid, rid, since),
        )
        return cursor.rowcount == 1

    def count_messages(self, rid: bytes, since: int, limit: int) -> int:
        """Messages of the queue received since ``since``, counted up to ``limit`` (enough for a quota check)."""
        return self._db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM messages WHERE rid = ? AND ts >= ? LIMIT ?)", (rid, since, limit)
        ).fetchone()[0]

    # --- forwarding, expiry, stats -------------------------------------------------------

    def remember_envelope(self, epk: bytes, expires: int) -> bool:
        """Record a forwarding envelope key; False if it was already recorded (a replay)."""
        cursor = self._db.execute(
            "INSERT INTO seen_envelopes (epk, expires) VALUES (?, ?) ON CONFLICT (epk) DO NOTHING", (epk, expires)
        )
        return cursor.rowcount == 1

    def remember_token(self, key: bytes, expires: int) -> None:
        """Record a stored SEND's token (as ``crypto.token_key``) until ``expires``."""
        self._db.execute("INSERT OR REPLACE INTO sent_tokens (key, expires) VALUES (?, ?)", (key, expires))

    def token_seen(self, key: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM sent_tokens WHERE key = ?", (key,)).fetchone() is not None

    def expire(self, messages_before: int, now: int) -> int:
        """Delete messages received before ``messages_before``, and expired envelope keys and tokens; return messages deleted."""
        deleted = self._db.execute("DELETE FROM messages WHERE ts < ?", (messages_before,)).rowcount
        self._db.execute("DELETE FROM seen_envelopes WHERE expires < ?", (now,))
        self._db.execute("DELETE FROM sent_tokens WHERE expires < ?", (now,))
        return deleted

    def counts(self) -> tuple[int, int]:
        """(number of queues, number of stored messages)."""
        queues = self._db.execute("SELECT count(*) FROM queues").fetchone()[0]
        messages = self._db.execute("SELECT count(*) FROM messages").fetchone()[0]
        return queues, messages

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it, so deleted rows leave no copy in the WAL."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def rewrite(self) -> None:
        """Rebuild the file with every table in key order (VACUUM), then empty the WAL.

        Rows are placed in pages, and pages in the file, in the order they were
        written, which records when each queue and message arrived; after a
        rewrite the layout follows the keys (random ids), so it records nothing.
        """
        self._db.execute("VACUUM")
        self.checkpoint()

    def close(self) -> None:
        self._db.close()


def read_counts(path: str | os.PathLike) -> tuple[int, int]:
    """(queues, messages) of a node database, read-only (safe while the node runs)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        queues = db.execute("SELECT count(*) FROM queues").fetchone()[0]
        messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        return queues, messages
    finally:
        db.close()
