"""The PostgreSQL ``QueueStore``: one database that several processes of one node share.

Selected with ``onionpost node init --store postgresql://...`` (the optional
``postgres`` extra: psycopg 3). The rows are those of the SQLite store
(docs/protocol/relay.md, "Model"); what differs:

- Durability: a transaction returns after PostgreSQL's COMMIT, which waits for
  its WAL flush (``synchronous_commit`` is forced on for the node's sessions).
- Several backends: a SEND locks its queue's row (``FOR NO KEY UPDATE``) for
  its transaction, so the quota check and the per-queue message number are
  exact across processes; an ACK's DELETE removes a message at most once (the
  loser of two concurrent ACKs finds no row). A stored message is announced
  with ``pg_notify`` in the same transaction, so other backends hear of it only
  once it is committed (``node.cluster`` pushes it to a subscriber they hold).
- One identity: the database records the public key of the node that created
  it and refuses any other (``StoreError``).
- Deleted rows: MVCC leaves a deleted row in its page until VACUUM frees the
  space, and even then the bytes stay until reused. ``checkpoint`` (run about
  a second after every deletion) VACUUMs the node's tables; ``rewrite`` (hourly
  after writes) rebuilds them in key order (CLUSTER) into new files; the tables
  carry an aggressive autovacuum policy. Nothing overwrites the freed disk
  blocks or the WAL segments as SQLite's ``secure_delete`` does: the
  operator's full-disk encryption covers them (docs/operations.md, relay.md
  "Threat model").
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

try:
    import psycopg
    from psycopg import pq
except ImportError:  # the optional extra is not installed
    psycopg = pq = None

from .store import QueueRecord, StoredMessage, StoreError

SCHEMA_VERSION = 1
ARRIVED_CHANNEL = "onionpost_arrived"
"""NOTIFY channel: ``<origin> <rid hex>`` for each stored message, ``<origin> <rid hex> deleted`` for a
deleted queue; delivered on commit."""
SUBSCRIBED_CHANNEL = "onionpost_subscribed"
"""NOTIFY channel: ``<origin> <token> <rid hex>`` for each SUB (``node.cluster``)."""
SCHEMA_LOCK = 0x6F6E696F6E706F73
"""Advisory lock key: one process at a time creates or checks the schema."""
REWRITE_LOCK = SCHEMA_LOCK + 1
CONNECT_TIMEOUT = 10

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS node_meta (key text PRIMARY KEY, value bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS queues (
        rid bytea PRIMARY KEY,
        snd bytea NOT NULL UNIQUE,
        rkey bytea NOT NULL,
        skey bytea,
        queue_key bytea NOT NULL,
        suspended boolean NOT NULL DEFAULT false,
        unsigned_sends integer NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS messages (
        rid bytea NOT NULL,
        n bigint NOT NULL,
        mid bytea NOT NULL,
        ts bigint NOT NULL,
        box bytea NOT NULL,
        PRIMARY KEY (rid, n)
    )""",
    "CREATE INDEX IF NOT EXISTS messages_by_time ON messages (ts)",
    "CREATE TABLE IF NOT EXISTS seen_envelopes (epk bytea PRIMARY KEY, expires bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sent_tokens (key bytea PRIMARY KEY, expires bigint NOT NULL)",
]
FIRST_TIME = [
    # Sealed boxes do not compress: store them out of line without trying.
    "ALTER TABLE messages ALTER COLUMN box SET STORAGE EXTERNAL",
]
"""Run once, when the schema is created (an ALTER TABLE locks the table: not at every backend's start)."""
CHURN_TABLES = ("messages", "seen_envelopes", "sent_tokens", "queues")
AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50, "
    "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000"
)
"""Autovacuum after 50 dead rows whatever the table's size (the default waits for 20 % of it)."""


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return "the PostgreSQL URL"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connect(url: str):
    """A psycopg connection in autocommit mode (transactions are explicit BEGIN/COMMIT).

    Raises:
        StoreError: psycopg is not installed, or the database cannot be reached.
    """
    if psycopg is None:
        raise StoreError("a PostgreSQL store needs psycopg: install onionpost's 'postgres' extra "
                         "(scripts/setup.sh installs it)")
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        conn.execute("SET synchronous_commit = on")
        return conn
    except (psycopg.Error, ValueError) as exc:
        raise StoreError(f"cannot reach the database {display_url(url)}: {_first_line(exc)}") from None


BYTEA, INT8, INT4, BOOL, TEXT = 17, 20, 23, 16, 25
"""Type OIDs of the statements' parameters (sent in binary)."""
QUEUE_COLUMNS = "rid, snd, rkey, skey, queue_key, suspended, unsigned_sends"
STATEMENTS = {
    "add_queue": (f"INSERT INTO queues ({QUEUE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                  (BYTEA, BYTEA, BYTEA, BYTEA, BYTEA, BOOL, INT4)),
    "queue_by_rid": (f"SELECT {QUEUE_COLUMNS} FROM queues WHERE rid = $1", (BYTEA,)),
    # SENDs to one queue are applied one at a time, across backends: see the module docstring.
    "queue_by_sender": (f"SELECT {QUEUE_COLUMNS} FROM queues WHERE snd = $1 FOR NO KEY UPDATE", (BYTEA,)),
    "set_sender_key": ("UPDATE queues SET skey = $1 WHERE rid = $2", (BYTEA, BYTEA)),
    "suspend": ("UPDATE queues SET suspended = true WHERE rid = $1", (BYTEA,)),
    "count_unsigned_send": ("UPDATE queues SET unsigned_sends = unsigned_sends + 1 WHERE rid = $1", (BYTEA,)),
    "delete_queue_messages": ("DELETE FROM messages WHERE rid = $1", (BYTEA,)),
    "delete_queue": ("DELETE FROM queues WHERE rid = $1", (BYTEA,)),
    "notify": ("SELECT pg_notify($1, $2)", (TEXT, TEXT)),
    "add_message": (
        "WITH added AS (INSERT INTO messages (rid, n, mid, ts, box) "
        "SELECT $1, coalesce(max(n), 0) + 1, $2, $3, $4 FROM messages WHERE rid = $1 RETURNING 1) "
        "SELECT pg_notify($5, $6) FROM added",
        (BYTEA, BYTEA, INT8, BYTEA, TEXT, TEXT),
    ),
    "oldest_message": ("SELECT n, mid, ts, box FROM messages WHERE rid = $1 AND ts >= $2 ORDER BY n LIMIT 1", (BYTEA, INT8)),
    "delete_oldest": (
        "DELETE FROM messages WHERE rid = $1 AND mid = $2 AND n = "
        "(SELECT n FROM messages WHERE rid = $1 AND ts >= $3 ORDER BY n LIMIT 1)",
        (BYTEA, BYTEA, INT8),
    ),
    "count_messages": ("SELECT count(*) FROM (SELECT 1 FROM messages WHERE rid = $1 AND ts >= $2 LIMIT $3) AS live",
                       (BYTEA, INT8, INT8)),
    "remember_envelope": ("INSERT INTO seen_envelopes (epk, expires) VALUES ($1, $2) ON CONFLICT (epk) DO NOTHING", (BYTEA, INT8)),
    "remember_token": ("INSERT INTO sent_tokens (key, expires) VALUES ($1, $2) "
                       "ON CONFLICT (key) DO UPDATE SET expires = excluded.expires", (BYTEA, INT8)),
    "token_seen": ("SELECT 1 FROM sent_tokens WHERE key = $1", (BYTEA,)),
    "expire_messages": ("DELETE FROM messages WHERE ts < $1", (INT8,)),
    "expire_envelopes": ("DELETE FROM seen_envelopes WHERE expires < $1", (INT8,)),
    "expire_tokens": ("DELETE FROM sent_tokens WHERE expires < $1", (INT8,)),
}
"""Every statement of the command path, prepared once per connection and run through libpq directly:
about 11 µs of client CPU each, against about 31 µs through a psycopg cursor (measured on this machine)."""


def _int8(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


class PostgresQueueStore:
    """``QueueStore`` on one PostgreSQL connection (used by one thread at a time)."""

    def __init__(self, url: str, *, identity: bytes | None = None, origin: str | None = None):
        self.url = url
        self.origin = origin or os.urandom(8).hex()
        """This process among the node's backends (in NOTIFY payloads)."""
        self._changes = 0
        self._db = connect(url)
        try:
            self._setup(identity)
            self._prepare()
        except psycopg.Error as exc:
            self._db.close()
            raise StoreError(f"cannot use the database {display_url(url)}: {_first_line(exc)}") from None
        except BaseException:
            self._db.close()
            raise

    def _setup(self, identity: bytes | None) -> None:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in SCHEMA:
                self._db.execute(statement)
            meta = dict(self._db.execute("SELECT key, value FROM node_meta").fetchall())
            version = int(meta["schema"].decode()) if "schema" in meta else None
            if version is None:
                for statement in FIRST_TIME:
                    self._db.execute(statement)
                for table in CHURN_TABLES:
                    self._db.execute(f"ALTER TABLE {table} SET ({AUTOVACUUM})")
                self._db.execute("INSERT INTO node_meta (key, value) VALUES ('schema', %s)", (str(SCHEMA_VERSION).encode(),))
            elif version != SCHEMA_VERSION:
                raise StoreError(f"{display_url(self.url)} has schema version {version}; this node knows {SCHEMA_VERSION}")
            if identity is None:
                return
            recorded = meta.get("identity")
            if recorded is None:
                self._db.execute("INSERT INTO node_meta (key, value) VALUES ('identity', %s)", (identity,))
            elif bytes(recorded) != identity:
                raise StoreError(
                    f"the database {display_url(self.url)} belongs to another node (identity {bytes(recorded).hex()[:16]}...), "
                    f"not to this one ({identity.hex()[:16]}...): every backend of a node needs the same identity.key"
                )

    def _prepare(self) -> None:
        pg = self._db.pgconn
        for name, (sql, types) in STATEMENTS.items():
            self._check(pg.prepare(name.encode(), sql.encode(), list(types)))

    def _check(self, result):
        if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return result
        if self._db.pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError(_first_line(Exception(result.get_error_message() or "the connection is lost")))
        raise psycopg.errors.error_from_result(result, encoding="utf-8")

    def _run(self, name: bytes, *params):
        """Run a prepared statement (binary parameters and results)."""
        return self._check(self._db.pgconn.exec_prepared(name, list(params), [1] * len(params), result_format=1))

    def _write(self, name: bytes, *params) -> int:
        count = int(self._run(name, *params).command_tuples or 0)
        self._changes += count
        return count

    def _simple(self, sql: bytes) -> None:
        self._check(self._db.pgconn.exec_(sql))

    # --- transactions ---------------------------------------------------------

    def _reconnect_if_lost(self) -> None:
        if not self._db.closed and self._db.pgconn.status != pq.ConnStatus.BAD:
            return
        self._db.close()
        self._db = connect(self.url)
        try:
            self._prepare()
        except psycopg.Error as exc:
            raise StoreError(f"cannot use the database {display_url(self.url)}: {_first_line(exc)}") from None

    def _lost(self) -> bool:
        return self._db.closed or self._db.pgconn.status == pq.ConnStatus.BAD

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One durable transaction: committed (WAL flushed) on exit, rolled back on error.

        Raises:
            StoreError: the database cannot be reached (a lost connection is reopened first).
        """
        self._reconnect_if_lost()
        try:
            self._simple(b"BEGIN")
        except psycopg.OperationalError as exc:
            raise StoreError(f"the database {display_url(self.url)} is unreachable: {_first_line(exc)}") from None
        try:
            yield
        except BaseException:
            if not self._lost():
                self._simple(b"ROLLBACK")
            raise
        try:
            self._simple(b"COMMIT")
        except psycopg.OperationalError as exc:
            raise StoreError(f"commit to {display_url(self.url)} failed: {_first_line(exc)}") from None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._simple(b"SAVEPOINT op")
        try:
            yield
        except BaseException:
            if not self._lost():
                self._simple(b"ROLLBACK TO op")
                self._simple(b"RELEASE op")
            raise
        self._simple(b"RELEASE op")

    def changes(self) -> int:
        return self._changes

    # --- queues ------------------------------------------------------------------

    def add_queue(self, queue: QueueRecord) -> None:
        self._write(b"add_queue", queue.rid, queue.snd, queue.rkey, queue.skey, queue.queue_key,
                    b"\x01" if queue.suspended else b"\x00", queue.unsigned_sends.to_bytes(4, "big", signed=True))

    def queue_by_rid(self, rid: bytes) -> QueueRecord | None:
        return self._queue(b"queue_by_rid", rid)

    def queue_by_sender(self, snd: bytes) -> QueueRecord | None:
        """The queue, locked until the end of the transaction: SENDs to one queue are applied one at a time."""
        return self._queue(b"queue_by_sender", snd)

    def _queue(self, name: bytes, value: bytes) -> QueueRecord | None:
        result = self._run(name, value)
        if result.ntuples == 0:
            return None
        row = [result.get_value(0, column) for column in range(7)]
        return QueueRecord(row[0], row[1], row[2], row[3], row[4], row[5] == b"\x01", _int(row[6]))

    def set_sender_key(self, rid: bytes, skey: bytes) -> None:
        self._write(b"set_sender_key", skey, rid)

    def suspend(self, rid: bytes) -> None:
        self._write(b"suspend", rid)

    def count_unsigned_send(self, rid: bytes) -> None:
        self._write(b"count_unsigned_send", rid)

    def delete_queue(self, rid: bytes) -> None:
        """Delete the queue and its messages; on commit, a subscriber held by another backend gets END."""
        self._write(b"delete_queue_messages", rid)
        self._write(b"delete_queue", rid)
        self._run(b"notify", ARRIVED_CHANNEL.encode(), f"{self.origin} {rid.hex()} deleted".encode())

    # --- messages -------------------------------------------------------------------

    def add_message(self, rid: bytes, mid: bytes, ts: int, box: bytes) -> None:
        """Append to the queue (numbered after its last message) and announce it to the other backends on commit.

        The caller holds the queue's row lock (``queue_by_sender``), so no other
        process numbers a message of this queue until this transaction ends.
        """
        self._run(b"add_message", rid, mid, _int8(ts), box, ARRIVED_CHANNEL.encode(), f"{self.origin} {rid.hex()}".encode())
        self._changes += 1

    def oldest_message(self, rid: bytes, since: int) -> StoredMessage | None:
        result = self._run(b"oldest_message", rid, _int8(since))
        if result.ntuples == 0:
            return None
        n, mid, ts, box = (result.get_value(0, column) for column in range(4))
        return StoredMessage(_int(n), mid, _int(ts), box)

    def delete_oldest(self, rid: bytes, since: int, mid: bytes) -> bool:
        """Delete the queue's oldest live message if its id is ``mid``. Of two concurrent ACKs, one deletes it."""
        return self._write(b"delete_oldest", rid, mid, _int8(since)) == 1

    def count_messages(self, rid: bytes, since: int, limit: int) -> int:
        return _int(self._run(b"count_messages", rid, _int8(since), _int8(limit)).get_value(0, 0))

    # --- forwarding, expiry, stats -------------------------------------------------------

    def remember_envelope(self, epk: bytes, expires: int) -> bool:
        return self._write(b"remember_envelope", epk, _int8(expires)) == 1

    def remember_token(self, key: bytes, expires: int) -> None:
        self._write(b"remember_token", key, _int8(expires))

    def token_seen(self, key: bytes) -> bool:
        return self._run(b"token_seen", key).ntuples > 0

    def expire(self, messages_before: int, now: int) -> int:
        deleted = self._write(b"expire_messages", _int8(messages_before))
        self._write(b"expire_envelopes", _int8(now))
        self._write(b"expire_tokens", _int8(now))
        return deleted

    def counts(self) -> tuple[int, int]:
        return _counts(self._db)

    def checkpoint(self) -> None:
        """VACUUM the node's tables: the space of deleted rows is freed for reuse (tables another backend is vacuuming are skipped)."""
        self._reconnect_if_lost()
        self._db.execute(f"VACUUM (SKIP_LOCKED) {', '.join(CHURN_TABLES)}")

    def rewrite(self) -> None:
        """Rebuild every table in key order into new files (CLUSTER), so their layout keeps no arrival order.

        One backend at a time; the others skip their turn while one rewrites.
        """
        self._reconnect_if_lost()
        if not self._db.execute("SELECT pg_try_advisory_lock(%s)", (REWRITE_LOCK,)).fetchone()[0]:
            return
        try:
            for table, index in (("queues", "queues_pkey"), ("messages", "messages_pkey"),
                                 ("seen_envelopes", "seen_envelopes_pkey"), ("sent_tokens", "sent_tokens_pkey")):
                self._db.execute(f"CLUSTER {table} USING {index}")
        finally:
            self._db.execute("SELECT pg_advisory_unlock(%s)", (REWRITE_LOCK,))

    def close(self) -> None:
        self._db.close()


def _counts(db) -> tuple[int, int]:
    queues = db.execute("SELECT count(*) FROM queues").fetchone()[0]
    messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    return queues, messages


def read_counts(url: str) -> tuple[int, int]:
    """(queues, messages) in the database at ``url``.

    Raises:
        StoreError: the database cannot be reached or holds no node.
    """
    db = connect(url)
    try:
        return _counts(db)
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the node's tables in {display_url(url)}: {_first_line(exc)}") from None
    finally:
        db.close()
