"""User mistakes get one clear line on stderr and a non-zero exit; never a traceback."""

import pytest
from PIL import Image

from .conftest import Person, run_cli

pytestmark = pytest.mark.timeout(60)


def assert_clean_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def person(tmp_path, nodes):
    return Person(tmp_path / "home", "me", [nodes("relay")])


def test_receive_on_a_home_without_data(tmp_path):
    assert_clean_error(run_cli("--home", str(tmp_path / "empty"), "receive"), "no onionpost data", "profile create")


def test_receive_on_a_home_without_profile(tmp_path):
    home = str(tmp_path / "home")
    assert run_cli("--home", home, "profile", "create", "me").returncode == 0
    assert run_cli("--home", home, "profile", "delete", "me").returncode == 0
    assert_clean_error(run_cli("--home", home, "receive", "--wait", "0"), "no profile yet")


def test_send_to_unknown_contact(person):
    assert_clean_error(person.cli("send", "nobody", "hi"), "no contact named 'nobody'")


def test_options_also_work_after_the_command(person):
    result = run_cli("contacts", "--home", str(person.home), "--json")
    assert result.returncode == 0 and result.stdout.strip() == "[]"


def test_truncated_and_tampered_links(person, tmp_path):
    inviter = Person(tmp_path / "inviter", "inviter", [])
    assert_clean_error(inviter.cli("invite"), "no relay yet")
    made = person.cli("invite", "--link-only")
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip().splitlines()[0]
    assert link.startswith("onionpost:1/")
    assert_clean_error(person.cli("connect", link[:-7]), "bad invitation", "truncated")
    position = len(link) // 2
    tampered = link[:position] + ("A" if link[position] != "A" else "B") + link[position + 1 :]
    assert_clean_error(person.cli("connect", tampered), "bad invitation")
    assert_clean_error(person.cli("connect", "https://example.com/x"), "bad invitation")
    assert_clean_error(person.cli("connect"), "either an invitation LINK or --qr FILE")


def test_unreadable_qr_images(person, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), "white").save(blank)
    assert_clean_error(person.cli("connect", "--qr", str(not_an_image)), "not an image")
    assert_clean_error(person.cli("connect", "--qr", str(blank)), "no QR code")
    assert_clean_error(person.cli("connect", "--qr", str(tmp_path / "missing.png")), "does not exist")


def test_bad_relay_addresses(person):
    assert_clean_error(person.cli("relay", "add", "onionpost://abc@example.com:80"), "bad relay address")
    assert_clean_error(person.cli("relay", "remove", "onionpost://abc@127.0.0.1:1"), "bad relay address")


def test_unreachable_relay(tmp_path):
    from tests.integration.relay_helpers import NodeProcess

    stopped = NodeProcess.create(tmp_path / "stopped")  # initialised, never started
    lonely = Person(tmp_path / "lonely", "lonely", [stopped])
    assert_clean_error(lonely.cli("invite"), "cannot reach relay")


def test_verify_mismatch_exits_non_zero(person):
    assert_clean_error(person.cli("verify", "nobody", "--code", "123"), "no contact named")
