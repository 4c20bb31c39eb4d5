"""Queue storage: the ``QueueStore`` interface, and ``open_store`` to open one by location.

Two implementations: ``sqlite_store.SQLiteQueueStore`` (the default: ``node.db``
in the data directory, embedded, zero setup) and ``pg_store.PostgresQueueStore``
(a PostgreSQL database that several node processes can share; the optional
``postgres`` extra). A location is a file path (SQLite) or a
``postgresql://`` URL.

What the node relies on, whichever store (docs/protocol/relay.md, "Model"):
``transaction`` is durable when it returns (the committer answers only after
it, and batches many commands into one); ``savepoint`` undoes one command
alone; ``delete_oldest`` deletes a message at most once however many
sessions or processes ACK it; ``remember_envelope`` is in the same
transaction as the SEND it carries; ``expire`` applies the TTL; ``checkpoint``
and ``rewrite`` remove what deleted rows leave behind as far as the engine
allows (see each implementation).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class QueueRecord:
    rid: bytes
    snd: bytes
    rkey: bytes
    skey: bytes | None
    queue_key: bytes
    suspended: bool = False
    unsigned_sends: int = 0


@dataclass(frozen=True)
class StoredMessage:
    n: int
    """Order within its queue (from 1 while the queue is not empty); never leaves the node."""
    mid: bytes
    ts: int
    box: bytes


class QueueStore(Protocol):
    """Storage used by the mailbox. Calls are made from one thread at a time."""

    def transaction(self) -> Iterator[None]: ...
    def savepoint(self) -> Iterator[None]: ...
    def changes(self) -> int: ...
    def add_queue(self, queue: QueueRecord) -> None: ...
    def queue_by_rid(self, rid: bytes) -> QueueRecord | None: ...
    def queue_by_sender(self, snd: bytes) -> QueueRecord | None: ...
    def set_sender_key(self, rid: bytes, skey: bytes) -> None: ...
    def suspend(self, rid: bytes) -> None: ...
    def count_unsigned_send(self, rid: bytes) -> None: ...
    def delete_queue(self, rid: bytes) -> None: ...
    def add_message(self, rid: bytes, mid: bytes, ts: int, box: bytes) -> None: ...
    def oldest_message(self, rid: bytes, since: int) -> StoredMessage | None: ...
    def delete_oldest(self, rid: bytes, since: int, mid: bytes) -> bool: ...
    def count_messages(self, rid: bytes, since: int, limit: int) -> int: ...
    def remember_envelope(self, epk: bytes, expires: int) -> bool: ...
    def remember_token(self, key: bytes, expires: int) -> None: ...
    def token_seen(self, key: bytes) -> bool: ...
    def expire(self, messages_before: int, now: int) -> int: ...
    def counts(self) -> tuple[int, int]: ...
    def checkpoint(self) -> None: ...
    def rewrite(self) -> None: ...
    def close(self) -> None: ...


class StoreError(Exception):
    """The database cannot be opened, has an unknown schema, or belongs to another node; the message says which."""


def is_postgres(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def open_store(location: str | os.PathLike, *, identity: bytes | None = None) -> QueueStore:
    """Open (creating its tables if needed) the store at ``location``: a file path or a ``postgresql://`` URL.

    ``identity``: the node's public key. A PostgreSQL database records the first
    node that uses it and refuses any other (several processes of one node share it).

    Raises:
        StoreError: the store cannot be opened, or belongs to another node.
    """
    if is_postgres(location):
        from .pg_store import PostgresQueueStore

        return PostgresQueueStore(location, identity=identity)
    from .sqlite_store import SQLiteQueueStore

    return SQLiteQueueStore(location)


def read_counts(location: str | os.PathLike) -> tuple[int, int]:
    """(queues, messages) of a node's store, read-only (safe while the node runs)."""
    if is_postgres(location):
        from .pg_store import read_counts as read_pg

        return read_pg(location)
    from .sqlite_store import read_counts as read_sqlite

    return read_sqlite(location)


def __getattr__(name: str):
    """``node.store.SQLiteQueueStore`` still works (it moved to ``node.sqlite_store``)."""
    if name == "SQLiteQueueStore":
        from .sqlite_store import SQLiteQueueStore

        return SQLiteQueueStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
