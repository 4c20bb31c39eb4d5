"""The client's encrypted store: one SQLCipher database per home directory.

The file is ``HOME/onionpost.db``, in WAL mode, so ``-wal`` and ``-shm`` side
files sit beside it while it is open. The home directory is created 0700 and
every file is 0600.

Key derivation: the password is handed to SQLCipher as a passphrase
(``PRAGMA key``), so SQLCipher 4's defaults apply: PBKDF2-HMAC-SHA512 with
256,000 iterations and a random 16-byte salt kept in the file's first bytes.
We chose this over our own KDF plus a raw key because the salt then lives in
the one file (a copy or backup cannot lose it, and there is no second file to
keep consistent across a crash), ``PRAGMA rekey`` changes the password
atomically inside SQLCipher, and the stock ``sqlcipher`` shell can open the
file for recovery. The price is that PBKDF2 is not memory-hard like Argon2id,
so a weak password is cheaper to guess on GPUs.

Schema changes go through ``MIGRATIONS``: script N (1-based) moves the
database from ``PRAGMA user_version`` N-1 to N, in one transaction. To change
the schema, append a script; never edit one that has shipped.

A ``Database`` is meant for one thread (sqlite's default check applies).
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlcipher3

DB_NAME = "onionpost.db"
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")

MIGRATIONS: list[str] = [
    # 1: profiles, settings, relays. Contacts and messages come in later migrations.
    """
    CREATE TABLE profiles (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,          -- local handle, never sent to anyone
        display_name TEXT NOT NULL,         -- shown to accepted contacts only
        bio TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL         -- unix seconds, UTC
    ) STRICT;

    -- Free-form key/value pairs, e.g. key 'current_profile' -> a profiles.id.
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value ANY
    ) STRICT;

    CREATE TABLE relays (
        id INTEGER PRIMARY KEY,
        profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        address TEXT NOT NULL,              -- onionpost://<key>@<host>:<port>
        access_key TEXT,                    -- the relay's queue-creation password; NULL if open
        UNIQUE (profile_id, address)
    ) STRICT;
    """,
    # 2: invitations, contacts, messages, outbox (docs/client.md, "Storage").
    """
    CREATE TABLE invitations (
        id INTEGER PRIMARY KEY,
        profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        inbound BLOB NOT NULL,              -- InboundQueue waiting for a connection request
        secrets BLOB NOT NULL,              -- e2e InviterSecrets
        link TEXT NOT NULL,
        shared_as TEXT NOT NULL,            -- 'qr' or 'link': how we showed it
        auto_accept INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE contacts (
        id INTEGER PRIMARY KEY,
        profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,                -- our local name for them
        display_name TEXT,                  -- from their profile, once connected
        bio TEXT,
        role TEXT NOT NULL,                 -- 'inviter' or 'joiner'
        state TEXT NOT NULL,                -- see client/agent.py, "Contact states"
        provenance TEXT NOT NULL,           -- 'qr-screen', 'qr-image' or 'link'
        verified INTEGER NOT NULL DEFAULT 0,
        inbound BLOB,                       -- InboundQueue we read
        next_inbound BLOB,                  -- during rotation: the queue replacing it
        outbound BLOB,                      -- OutboundQueue we write to
        handshake BLOB,                     -- pending handshake state (request or JoinerPending)
        ratchet BLOB,                       -- e2e RatchetState
        send_chain BLOB,
        recv_chain BLOB,
        last_mid BLOB,                      -- last delivery stored, to skip redeliveries
        created_at INTEGER NOT NULL,
        UNIQUE (profile_id, alias)
    ) STRICT;

    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        direction TEXT NOT NULL,            -- 'out' or 'in'
        seq INTEGER,                        -- chain sequence number
        text TEXT NOT NULL,
        state TEXT NOT NULL,                -- out: pending, sent, delivered; in: received
        notice TEXT,                        -- chain finding shown with the message (gap, reordered, ...)
        created_at INTEGER NOT NULL,        -- sent (out) or received (in), unix seconds
        UNIQUE (contact_id, direction, seq)
    ) STRICT;

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
        queue BLOB,                         -- fixed OutboundQueue (handshake, rotation); NULL: the contact's current one
        body BLOB NOT NULL,                 -- the exact bytes to SEND, encrypted once
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at INTEGER NOT NULL
    ) STRICT;
    """,
    # 3: the event log (docs/daemon.md), send times for the outbox (docs/privacy.md), unread marks.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, so a subscriber's "since" keeps its meaning
        profile_id INTEGER REFERENCES profiles(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,                 -- message, request, delivered, connected, ... (docs/api.md)
        contact TEXT,
        text TEXT NOT NULL,
        data TEXT NOT NULL,                 -- JSON object: the event's own fields
        created_at INTEGER NOT NULL
    ) STRICT;

    ALTER TABLE outbox ADD COLUMN not_before REAL NOT NULL DEFAULT 0;   -- unix seconds: not sent earlier
    ALTER TABLE outbox ADD COLUMN automatic INTEGER NOT NULL DEFAULT 0; -- 1: receipt, profile, rotation
    ALTER TABLE messages ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;  -- in: 1 until shown to the user
    """,
    # 4: relay families (docs/privacy.md, "Fewer of a person's queues on any one relay").
    """
    ALTER TABLE relays ADD COLUMN family TEXT;  -- relays run by one operator share a family; NULL: its own
    """,
]


class DatabaseError(Exception):
    """The database could not be opened or used."""


class WrongPasswordError(DatabaseError):
    """The password does not decrypt the database."""


class NoDatabaseError(DatabaseError):
    """There is no database in the home directory and we were told not to create one."""


class SchemaTooNewError(DatabaseError):
    """The database was written by a newer onionpost than this one."""


def database_path(home: Path) -> Path:
    return Path(home) / DB_NAME


def open_database(
    home: Path,
    password: str,
    *,
    create: bool,
    migrations: Sequence[str] = MIGRATIONS,
) -> Database:
    """Open (and with ``create=True``, create if missing) ``HOME/onionpost.db``.

    The schema is migrated to ``len(migrations)`` before returning.

    Raises:
        ValueError: the password is empty or contains a NUL character.
        NoDatabaseError: ``create=False`` and there is no database (or an empty file).
        WrongPasswordError: the file exists and the password does not decrypt it.
        SchemaTooNewError: the database has more migrations than ``migrations``.
        DatabaseError: any other failure to open the file.
    """
    _check_password(password)
    home = Path(home)
    path = database_path(home)
    existed = path.is_file() and path.stat().st_size > 0
    if not create and not existed:
        reason = "is empty" if path.is_file() else "does not exist"
        raise NoDatabaseError(f"no onionpost database: {path} {reason}")

    with _private_umask():
        if create and not home.exists():
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(home, 0o700)
        conn = _connect(path, password, existed)
        try:
            # The first write in WAL mode creates the -wal/-shm files; the umask covers them.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA temp_store = MEMORY")  # keep sort/temp data off the disk
            _migrate(conn, migrations)
        except sqlcipher3.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot open {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
    _restrict_modes(path)
    return Database(conn, path)


class Database:
    """An open, unlocked onionpost database."""

    def __init__(self, conn: sqlcipher3.Connection, path: Path) -> None:
        self._conn = conn
        self._savepoints = 0
        self._after_commit: list[Callable[[], None]] = []
        self.path = path

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction commits (at once if none is open; never on rollback)."""
        if self._conn.in_transaction:
            self._after_commit.append(callback)
        else:
            callback()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlcipher3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlcipher3.Cursor:
        return self._conn.executemany(sql, rows)

    def fetch_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlcipher3.Row | None:
        return self._conn.execute(sql, params).fetchone()

    def fetch_all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlcipher3.Row]:
        return self._conn.execute(sql, params).fetchall()

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def schema_version(self) -> int:
        return _user_version(self._conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises.

        A transaction opened inside another one becomes a savepoint, so helpers
        that each use ``transaction()`` can be combined atomically.
        """
        conn = self._conn
        if conn.in_transaction:
            self._savepoints += 1
            name = f"nested_{self._savepoints}"
            conn.execute(f"SAVEPOINT {name}")
            try:
                yield self
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                self._savepoints -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
            conn.execute("COMMIT")
        except BaseException:
            self._after_commit.clear()
            # sqlite may already have rolled back by itself (e.g. on SQLITE_FULL).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def change_password(self, old: str, new: str) -> None:
        """Re-encrypt the database under ``new``; ``old`` must be the current password.

        Raises:
            WrongPasswordError: ``old`` is not the current password.
            ValueError: ``new`` is empty or contains a NUL character.
        """
        _check_password(new)
        if self._conn.in_transaction:
            raise DatabaseError("cannot change the password inside a transaction")
        _check_password(old)
        # Checking `old` costs one key derivation on a second connection.
        _connect(self.path, old, existed=True).close()
        self._conn.execute(f"PRAGMA rekey = {_quote(new)}")
        _restrict_modes(self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _connect(path: Path, password: str, existed: bool) -> sqlcipher3.Connection:
    mode = "rw" if existed else "rwc"
    uri = f"file:{urllib.parse.quote(str(path))}?mode={mode}"
    try:
        conn = sqlcipher3.connect(uri, uri=True, isolation_level=None)
    except sqlcipher3.Error as exc:
        raise DatabaseError(f"cannot open {path}: {exc}") from exc
    conn.row_factory = sqlcipher3.Row
    try:
        # Otherwise SQLCipher prints "hmac check failed" to stderr on a wrong password.
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = {_quote(password)}")
        # The key is only checked when page 1 is read; reading the schema does that
        # without writing anything.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError as exc:
        conn.close()
        if existed and getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise WrongPasswordError(
                f"wrong password for {path} (or the file is not an onionpost database)"
            ) from None
        raise DatabaseError(f"cannot open {path}: {exc}") from exc
    return conn


def _migrate(conn: sqlcipher3.Connection, migrations: Sequence[str]) -> None:
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read under the write lock, so two processes never apply the same step.
            version = _user_version(conn)
            if version > len(migrations):
                raise SchemaTooNewError(
                    f"the database has schema version {version}, but this onionpost "
                    f"knows only up to {len(migrations)}; upgrade onionpost"
                )
            if version == len(migrations):
                conn.execute("COMMIT")
                return
            for statement in _split_statements(migrations[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _split_statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT our open transaction, so run statements one by one.
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlcipher3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer  # a trailing comment, or an unterminated statement for sqlite to reject


def _user_version(conn: sqlcipher3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _check_password(password: str) -> None:
    if not isinstance(password, str):
        raise TypeError("the password must be a str")
    # An empty key would make SQLCipher write a plaintext database.
    if not password:
        raise ValueError("the password must not be empty")
    if "\0" in password:
        raise ValueError("the password must not contain NUL characters")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    # The umask is process-wide: another thread creating files meanwhile gets it too.
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _restrict_modes(path: Path) -> None:
    for candidate in [path, *(path.with_name(path.name + s) for s in SIDE_SUFFIXES)]:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(candidate, 0o600)
