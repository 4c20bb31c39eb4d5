import os
import stat
from pathlib import Path

import pytest

from onionpost.client.db import (
    DB_NAME,
    MIGRATIONS,
    Database,
    DatabaseError,
    NoDatabaseError,
    SchemaTooNewError,
    WrongPasswordError,
    open_database,
)

PASSWORD = "correct horse battery staple"
SECRET_NAME = "Zebulon-Quixotic-Display-7731"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def add_profile(db: Database, name: str = "main", display_name: str = "Alice") -> int:
    cursor = db.execute(
        "INSERT INTO profiles (name, display_name, created_at) VALUES (?, ?, ?)",
        (name, display_name, 1_700_000_000),
    )
    return cursor.lastrowid


def side_files(home: Path) -> list[Path]:
    return sorted(p for p in home.iterdir() if p.name != DB_NAME)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_close_and_reopen_keeps_data(home):
    db = open_database(home, PASSWORD, create=True)
    assert db.path == home / DB_NAME
    assert db.schema_version == len(MIGRATIONS)
    add_profile(db)
    db.close()

    with open_database(home, PASSWORD, create=False) as db:
        row = db.fetch_one("SELECT name, display_name, bio FROM profiles")
        assert (row["name"], row["display_name"], row["bio"]) == ("main", "Alice", "")


def test_create_true_on_an_existing_database_opens_it(home):
    with open_database(home, PASSWORD, create=True) as db:
        add_profile(db)
    with open_database(home, PASSWORD, create=True) as db:
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 1


@pytest.mark.parametrize("create", [False, True])
def test_wrong_password_is_refused_and_the_file_is_untouched(home, create):
    with open_database(home, PASSWORD, create=True) as db:
        add_profile(db)
    path = home / DB_NAME
    before = path.read_bytes()

    with pytest.raises(WrongPasswordError, match=f"wrong password for {path}"):
        open_database(home, "not the password", create=create)

    assert path.read_bytes() == before
    assert side_files(home) == []
    with open_database(home, PASSWORD, create=False) as db:
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 1


def test_a_file_that_is_not_a_database_is_refused(home):
    home.mkdir()
    junk = os.urandom(8192)
    (home / DB_NAME).write_bytes(junk)
    with pytest.raises(WrongPasswordError):
        open_database(home, PASSWORD, create=True)
    assert (home / DB_NAME).read_bytes() == junk


def test_missing_database_without_create(home):
    with pytest.raises(NoDatabaseError, match="does not exist"):
        open_database(home, PASSWORD, create=False)
    assert not home.exists()


def test_empty_file_counts_as_missing(home):
    home.mkdir()
    (home / DB_NAME).touch()
    with pytest.raises(NoDatabaseError, match="is empty"):
        open_database(home, PASSWORD, create=False)
    with open_database(home, PASSWORD, create=True) as db:
        assert db.schema_version == len(MIGRATIONS)
    with pytest.raises(WrongPasswordError):
        open_database(home, "other", create=False)


@pytest.mark.parametrize("password", ["", "nul\0inside"])
def test_unusable_passwords_are_rejected_before_touching_disk(home, password):
    with pytest.raises(ValueError):
        open_database(home, password, create=True)
    assert not home.exists()


def test_password_with_quotes_and_unicode(home):
    password = "it's a 'quoted' пароль"
    with open_database(home, password, create=True) as db:
        add_profile(db)
    with pytest.raises(WrongPasswordError):
        open_database(home, "it's a ", create=False)
    with open_database(home, password, create=False) as db:
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 1


def test_modes_of_home_and_every_file(tmp_path):
    home = tmp_path / "a" / "home"
    old_umask = os.umask(0o022)
    try:
        db = open_database(home, PASSWORD, create=True)
        with db.transaction():
            add_profile(db)
        files = [home / DB_NAME, home / (DB_NAME + "-wal"), home / (DB_NAME + "-shm")]
        assert all(p.exists() for p in files)
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert mode(home) == 0o700
        assert mode(tmp_path / "a") == 0o700
        assert os.umask(0o022) == 0o022  # open_database restored our umask
        db.close()

        os.chmod(home / DB_NAME, 0o644)
        with open_database(home, PASSWORD, create=False) as db:
            add_profile(db, name="second")
            assert all(mode(p) == 0o600 for p in home.iterdir())
    finally:
        os.umask(old_umask)


def test_plaintext_never_reaches_the_disk(home):
    db = open_database(home, PASSWORD, create=True)
    with db.transaction():
        add_profile(db, display_name=SECRET_NAME)
        db.execute("INSERT INTO settings (key, value) VALUES ('note', ?)", (SECRET_NAME + "-note",))
    assert db.fetch_one("SELECT display_name FROM profiles")[0] == SECRET_NAME

    needles = [SECRET_NAME.encode(), SECRET_NAME.encode("utf-16-le"), b"SQLite format 3", b"CREATE TABLE"]
    wal = home / (DB_NAME + "-wal")
    assert wal.stat().st_size > 0  # the commit is in the WAL while the database is open
    for path in home.iterdir():
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path.name

    db.close()
    for path in home.iterdir():
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path.name


def test_durability_settings(home):
    with open_database(home, PASSWORD, create=True) as db:
        assert db.fetch_one("PRAGMA journal_mode")[0] == "wal"
        assert db.fetch_one("PRAGMA synchronous")[0] == 2  # FULL
        assert db.fetch_one("PRAGMA foreign_keys")[0] == 1


def test_transaction_commits(home):
    with open_database(home, PASSWORD, create=True) as db:
        with db.transaction():
            add_profile(db, "one")
            add_profile(db, "two")
    with open_database(home, PASSWORD, create=False) as db:
        assert [r[0] for r in db.fetch_all("SELECT name FROM profiles ORDER BY id")] == ["one", "two"]


def test_transaction_rolls_back_on_exception(home):
    with open_database(home, PASSWORD, create=True) as db:
        with pytest.raises(RuntimeError, match="boom"):
            with db.transaction():
                add_profile(db, "one")
                db.execute("INSERT INTO settings (key, value) VALUES ('current_profile', 1)")
                raise RuntimeError("boom")
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 0
        assert db.fetch_one("SELECT count(*) FROM settings")[0] == 0

        # A failing statement rolls back the statements before it, too.
        with pytest.raises(Exception, match="UNIQUE"):
            with db.transaction():
                add_profile(db, "dup")
                add_profile(db, "dup")
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 0


def test_nested_transaction_rolls_back_only_the_inner_block(home):
    with open_database(home, PASSWORD, create=True) as db:
        with db.transaction():
            add_profile(db, "outer")
            with pytest.raises(KeyError):
                with db.transaction():
                    add_profile(db, "inner")
                    raise KeyError("inner")
            with db.transaction():
                add_profile(db, "inner-kept")
        names = [r[0] for r in db.fetch_all("SELECT name FROM profiles ORDER BY id")]
        assert names == ["outer", "inner-kept"]


def test_relays_belong_to_a_profile(home):
    with open_database(home, PASSWORD, create=True) as db:
        profile = add_profile(db)
        db.execute(
            "INSERT INTO relays (profile_id, address, access_key) VALUES (?, ?, ?)",
            (profile, "onionpost://k@h.onion:80", None),
        )
        with pytest.raises(Exception, match="UNIQUE"):
            db.execute("INSERT INTO relays (profile_id, address) VALUES (?, ?)", (profile, "onionpost://k@h.onion:80"))
        with pytest.raises(Exception, match="FOREIGN KEY"):
            db.execute("INSERT INTO relays (profile_id, address) VALUES (?, ?)", (profile + 1, "x"))
        db.execute("DELETE FROM profiles WHERE id = ?", (profile,))
        assert db.fetch_one("SELECT count(*) FROM relays")[0] == 0


def test_migrations_are_applied_once_and_in_order(home):
    extra = MIGRATIONS + ["CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (1); -- trailing comment"]
    with open_database(home, PASSWORD, create=True) as db:
        assert db.schema_version == len(MIGRATIONS)
    with open_database(home, PASSWORD, create=False, migrations=extra) as db:
        assert db.schema_version == len(MIGRATIONS) + 1
    # Re-running would fail on "table extra already exists" or add a second row.
    with open_database(home, PASSWORD, create=False, migrations=extra) as db:
        assert db.schema_version == len(MIGRATIONS) + 1
        assert [tuple(r) for r in db.fetch_all("SELECT x FROM extra")] == [(1,)]


def test_a_failing_migration_changes_nothing(home):
    with open_database(home, PASSWORD, create=True):
        pass
    broken = MIGRATIONS + ["CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1);"]
    with pytest.raises(DatabaseError, match="no_such_table"):
        open_database(home, PASSWORD, create=False, migrations=broken)
    with open_database(home, PASSWORD, create=False) as db:
        assert db.schema_version == len(MIGRATIONS)
        assert db.fetch_one("SELECT count(*) FROM sqlite_master WHERE name = 'half'")[0] == 0


def test_a_newer_schema_is_refused(home):
    with open_database(home, PASSWORD, create=True, migrations=MIGRATIONS + ["CREATE TABLE later (x)"]):
        pass
    with pytest.raises(SchemaTooNewError, match=f"schema version {len(MIGRATIONS) + 1}"):
        open_database(home, PASSWORD, create=False)


def test_change_password(home):
    with open_database(home, PASSWORD, create=True) as db:
        add_profile(db)
        with pytest.raises(WrongPasswordError):
            db.change_password("wrong old password", "new password")
        db.change_password(PASSWORD, "new password")
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 1
    with pytest.raises(WrongPasswordError):
        open_database(home, PASSWORD, create=False)
    with open_database(home, "new password", create=False) as db:
        assert db.fetch_one("SELECT count(*) FROM profiles")[0] == 1
        assert all(mode(p) == 0o600 for p in home.iterdir())
