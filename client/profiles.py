"""Profiles and their trusted relays, on the encrypted database.

A profile is a local persona: a local name (to pick it on the command line),
a display name that is shown only to accepted contacts, and an optional bio.
Nothing about a profile is registered anywhere.
"""

import time
from dataclasses import dataclass

from onionpost.proto import AddressError, parse_node_address

from .db import Database

CURRENT_PROFILE = "current_profile"
MAX_NAME = 64
MAX_DISPLAY_NAME = 100
MAX_BIO = 500


class ProfileError(Exception):
    """A user mistake about profiles or relays (unknown name, duplicate, bad address)."""


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    display_name: str
    bio: str


@dataclass(frozen=True)
class Relay:
    address: str
    access_key: str | None
    family: str | None = None
    """Relays with one operator share a family and count as one relay when queues are spread."""

    @property
    def operator(self) -> str:
        return f"family:{self.family}" if self.family else f"relay:{self.address}"


def _check_text(what: str, value: str, limit: int, *, allow_empty: bool = False) -> str:
    value = value.strip()
    if not value and not allow_empty:
        raise ProfileError(f"{what} must not be empty")
    if len(value) > limit:
        raise ProfileError(f"{what} must be at most {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise ProfileError(f"{what} must not contain control characters")
    return value


def create_profile(db: Database, name: str, display_name: str | None = None, bio: str = "") -> Profile:
    name = _check_text("profile name", name, MAX_NAME)
    display = _check_text("display name", display_name or name, MAX_DISPLAY_NAME)
    bio = _check_text("bio", bio, MAX_BIO, allow_empty=True)
    with db.transaction():
        if db.fetch_one("SELECT 1 FROM profiles WHERE name = ?", (name,)):
            raise ProfileError(f"a profile named {name!r} already exists")
        cursor = db.execute(
            "INSERT INTO profiles (name, display_name, bio, created_at) VALUES (?, ?, ?, ?)",
            (name, display, bio, int(time.time())),
        )
        if db.fetch_one("SELECT value FROM settings WHERE key = ?", (CURRENT_PROFILE,)) is None:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (CURRENT_PROFILE, cursor.lastrowid))
    return Profile(cursor.lastrowid, name, display, bio)


def list_profiles(db: Database) -> list[Profile]:
    rows = db.fetch_all("SELECT id, name, display_name, bio FROM profiles ORDER BY id")
    return [Profile(*row) for row in rows]


def get_profile(db: Database, name: str | None = None) -> Profile:
    """The profile called ``name``, or the current one.

    Raises:
        ProfileError: no such profile, or no profile at all.
    """
    if name is not None:
        row = db.fetch_one("SELECT id, name, display_name, bio FROM profiles WHERE name = ?", (name,))
        if row is None:
            raise ProfileError(f"no profile named {name!r} (see 'onionpost profile list')")
        return Profile(*row)
    row = db.fetch_one(
        "SELECT p.id, p.name, p.display_name, p.bio FROM profiles p JOIN settings s "
        "ON s.key = ? AND s.value = p.id",
        (CURRENT_PROFILE,),
    )
    if row is None:
        raise ProfileError("no profile yet: create one with 'onionpost profile create NAME'")
    return Profile(*row)


def current_profile_id(db: Database) -> int | None:
    row = db.fetch_one("SELECT value FROM settings WHERE key = ?", (CURRENT_PROFILE,))
    return row[0] if row else None


def use_profile(db: Database, name: str) -> Profile:
    profile = get_profile(db, name)
    with db.transaction():
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (CURRENT_PROFILE, profile.id))
    return profile


def delete_profile(db: Database, name: str) -> Profile:
    """Delete a profile with its relays, contacts and history (on this device)."""
    profile = get_profile(db, name)
    with db.transaction():
        db.execute("DELETE FROM profiles WHERE id = ?", (profile.id,))
        if current_profile_id(db) == profile.id:
            row = db.fetch_one("SELECT id FROM profiles ORDER BY id LIMIT 1")
            if row is None:
                db.execute("DELETE FROM settings WHERE key = ?", (CURRENT_PROFILE,))
            else:
                db.execute("UPDATE settings SET value = ? WHERE key = ?", (row[0], CURRENT_PROFILE))
    return profile


def normalise_relay_address(address: str) -> str:
    try:
        return str(parse_node_address(address))
    except AddressError as exc:
        raise ProfileError(f"bad relay address: {exc}") from None


def add_relay(db: Database, profile: Profile, address: str, access_key: str | None = None,
              family: str | None = None) -> Relay:
    address = normalise_relay_address(address)
    if access_key is not None:
        access_key = _check_text("access key", access_key, 128)
    if family is not None:
        family = _check_text("family", family, 64)
    with db.transaction():
        if db.fetch_one("SELECT 1 FROM relays WHERE profile_id = ? AND address = ?", (profile.id, address)):
            raise ProfileError(f"relay already in profile {profile.name!r}: {address}")
        db.execute(
            "INSERT INTO relays (profile_id, address, access_key, family) VALUES (?, ?, ?, ?)",
            (profile.id, address, access_key, family),
        )
    return Relay(address, access_key, family)


def list_relays(db: Database, profile: Profile) -> list[Relay]:
    rows = db.fetch_all("SELECT address, access_key, family FROM relays WHERE profile_id = ? ORDER BY id", (profile.id,))
    return [Relay(*row) for row in rows]


def remove_relay(db: Database, profile: Profile, address: str) -> Relay:
    address = normalise_relay_address(address)
    row = db.fetch_one("SELECT address, access_key, family FROM relays WHERE profile_id = ? AND address = ?",
                       (profile.id, address))
    if row is None:
        raise ProfileError(f"relay not in profile {profile.name!r}: {address}")
    with db.transaction():
        db.execute("DELETE FROM relays WHERE profile_id = ? AND address = ?", (profile.id, address))
    return Relay(*row)
