"""The device store is encrypted: no name, alias or message text in its bytes; owner-only files."""

import hashlib
import stat

import pytest

from .conftest import Person, close_agent, connect_pair, run_cli

SECRETS = ["Zanzibar Display", "QuokkaAlias", "Marmalade secret text 7781", "Bilbo bio line"]


def raw_bytes(home) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.iterdir()) if p.is_file())


@pytest.mark.timeout(90)
async def test_store_holds_no_plaintext_and_is_private(tmp_path, nodes):
    relay = nodes("relay")
    alice = Person(tmp_path / "alice", "alice", [relay])
    bob = Person(tmp_path / "bob", "bob", [relay])
    result = bob.cli("profile", "create", "second", "--display-name", SECRETS[0], "--bio", SECRETS[3])
    assert result.returncode == 0, result.stderr
    a, b = alice.agent(), bob.agent()
    try:
        await connect_pair(a, b, alias="QuokkaAlias")
        await b.send("QuokkaAlias", SECRETS[2])
        await b.flush()
        await a.receive(wait=0.3)
        assert [m["text"] for m in a.history(a.contacts()[0].alias)] == [SECRETS[2]]
    finally:
        await close_agent(a), await close_agent(b)
    for home in (alice.home, bob.home):
        data = raw_bytes(home)
        assert len(data) > 4096
        for secret in SECRETS + ["alice", "Alice", "SQLite format 3"]:
            assert secret.encode() not in data, f"{secret!r} readable in {home}"
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for path in home.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.timeout(60)
def test_wrong_password_fails_cleanly_and_changes_nothing(tmp_path):
    home = tmp_path / "home"
    assert run_cli("--home", str(home), "profile", "create", "me").returncode == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.iterdir()}
    result = run_cli("--home", str(home), "contacts", password="not the password")
    assert result.returncode == 1
    assert result.stderr.startswith("error: wrong password") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.iterdir()}
    assert after == before
