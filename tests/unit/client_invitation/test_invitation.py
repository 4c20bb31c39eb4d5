import base64
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionpost.client import invitation as inv_module
from onionpost.client.invitation import (
    INVITATION_VERSION,
    Invitation,
    InvitationError,
    format_invitation,
    parse_invitation,
)


def onion_relay(seed: bytes, port: int = 80) -> str:
    """A relay address shaped like the real ones: key, v3 onion (56 base32 chars), port."""
    key = base64.urlsafe_b64encode(hashlib.sha256(b"key" + seed).digest()).decode().rstrip("=")
    onion_key = hashlib.sha256(b"onion" + seed).digest()
    checksum = hashlib.sha3_256(b".onion checksum" + onion_key + b"\x03").digest()[:2]
    onion = base64.b32encode(onion_key + checksum + b"\x03").decode().lower()
    return f"onionpost://{key}@{onion}.onion:{port}"


def make_invitation(relay: str | None = None, seed: bytes = b"") -> Invitation:
    def field(label: bytes, size: int) -> bytes:
        return hashlib.blake2b(label + seed, digest_size=size).digest()

    return Invitation(
        version=INVITATION_VERSION,
        relay=relay if relay is not None else onion_relay(seed),
        queue_id=field(b"queue", 24),
        ik=field(b"ik", 32),
        ek=field(b"ek", 32),
    )


INVITATION = make_invitation()
LINK = format_invitation(INVITATION)
PAYLOAD_START = len("onionpost:1/")


def with_noncanonical_key(relay: str) -> str:
    """The same relay with the key's unused low bits set: decodes to the same bytes, must stay text."""
    head, tail = relay.split("@")
    return head[:-1] + "B" + "@" + tail


def with_valid_checksum(body: bytes) -> str:
    """A link around a hand-made body, so field checks past the checksum can be reached."""
    payload = body + inv_module._checksum(1, body)
    return "onionpost:1/" + base64.b32encode(payload).decode().rstrip("=")


def test_sample_relay_has_the_expected_shape():
    relay = INVITATION.relay
    host = relay.split("@")[1].split(":")[0]
    assert len(relay.split("@")[0]) == len("onionpost://") + 43
    assert len(host) == 62 and host.endswith(".onion")


def test_round_trip_with_onion_relay():
    assert re.fullmatch(r"onionpost:1/[A-Z2-7]+", LINK)
    assert len(LINK) == 272
    assert parse_invitation(LINK) == INVITATION


@pytest.mark.parametrize(
    "relay",
    [
        "onionpost://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@127.0.0.1:5223",
        "onionpost://k@[::1]:80",
        "x",
        "~" * 200,
        onion_relay(b"port", port=65535),
        onion_relay(b"port").rsplit(":", 1)[0] + ":080",  # not canonical: kept as text
        onion_relay(b"upper").upper(),
        with_noncanonical_key(onion_relay(b"bits")),
    ],
)
def test_round_trip_with_other_relays(relay):
    invitation = make_invitation(relay)
    assert parse_invitation(format_invitation(invitation)) == invitation


def test_surrounding_whitespace_and_case_are_tolerated():
    assert parse_invitation(f"  \n\t{LINK}\r\n ") == INVITATION
    assert parse_invitation(LINK.lower()) == INVITATION
    assert parse_invitation("ONIONPOST:" + LINK[len("onionpost:") :]) == INVITATION


def test_different_invitations_give_different_links():
    other = make_invitation(seed=b"2")
    assert format_invitation(other) != LINK
    assert parse_invitation(format_invitation(other)) == other


def replace_at(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


def other_base32_char(char: str) -> str:
    return "B" if char.upper() == "A" else "A"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("https://example.com/x", "must start with 'onionpost:'"),
        ("onionpos", "must start with 'onionpost:'"),
        ("onionpost:1", "no '/' after the version"),
        (INVITATION.relay, "this is a relay address"),
        ("onionpost:2/" + LINK[PAYLOAD_START:], "unsupported invitation version 2"),
        ("onionpost:999999/" + LINK[PAYLOAD_START:], "unsupported invitation version 999999"),
        ("onionpost:01/" + LINK[PAYLOAD_START:], "not a valid version number"),
        ("onionpost:x/" + LINK[PAYLOAD_START:], "not a valid version number"),
        ("onionpost:1/", r"truncated \(0 characters"),
        (LINK[:PAYLOAD_START + 1], r"truncated \(1 characters"),
        (LINK[:-1], r"truncated \(259 of 260 characters"),
        (LINK[:200], r"truncated \(188 of 260 characters"),
        (LINK + "A", r"too long: 1 extra character\(s\)"),
        (LINK + "AAAAAAAA", "too long: 8 extra"),
        (replace_at(LINK, 40, "1"), "invalid character '1' at position 41"),
        (replace_at(LINK, 100, "é"), "invalid character 'é' at position 101"),
        (LINK[:150] + " " + LINK[150:], "invalid character ' ' at position 151"),
        (replace_at(LINK, 150, other_base32_char(LINK[150])), r"checksum mismatch"),
        (replace_at(LINK, len(LINK) - 1, "7"), "last character is impossible"),
        # An unknown relay form: the first payload byte is 0xFF.
        (replace_at(LINK, PAYLOAD_START, "7"), "unknown relay encoding"),
    ],
)
def test_bad_links_are_reported_precisely(text, message):
    with pytest.raises(InvitationError, match=message):
        parse_invitation(text)


def test_swapped_characters_are_detected():
    index = next(i for i in range(150, 200) if LINK[i] != LINK[i + 1])
    swapped = LINK[:index] + LINK[index + 1] + LINK[index] + LINK[index + 2 :]
    with pytest.raises(InvitationError, match="checksum mismatch"):
        parse_invitation(swapped)


def test_every_truncation_is_reported_as_truncated():
    for end in range(PAYLOAD_START, len(LINK)):
        with pytest.raises(InvitationError, match="truncated"):
            parse_invitation(LINK[:end])


@pytest.mark.parametrize(
    "relay_bytes, message",
    [
        (b"caf\xc3\xa9", "not ASCII"),
        (b"a b", "visible ASCII"),
        (b"esc\x1b[2J", "visible ASCII"),
        (b"", "1 to 200 characters"),
        (b"r" * 201, "1 to 200 characters"),
    ],
)
def test_bad_fields_behind_a_valid_checksum_are_refused(relay_bytes, message):
    body = bytes([0, len(relay_bytes)]) + relay_bytes + bytes(24 + 32 + 32)
    with pytest.raises(InvitationError, match=message):
        parse_invitation(with_valid_checksum(body))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"version": 0}, "version must be a positive int"),
        ({"version": True}, "version must be a positive int"),
        ({"version": "1"}, "version must be a positive int"),
        ({"relay": b"onionpost://x"}, "relay must be a str"),
        ({"relay": "é"}, "visible ASCII"),
        ({"queue_id": bytes(23)}, "queue_id must be 24 bytes, got 23"),
        ({"queue_id": bytearray(24)}, "queue_id must be bytes, got bytearray"),
        ({"ik": bytes(31)}, "ik must be 32 bytes, got 31"),
        ({"ek": "0" * 32}, "ek must be bytes, got str"),
    ],
)
def test_invitation_fields_are_checked(changes, message):
    fields = {**INVITATION.__dict__, **changes}
    with pytest.raises(InvitationError, match=message):
        Invitation(**fields)


def test_unsupported_version_cannot_be_written():
    with pytest.raises(InvitationError, match="cannot write invitation version 2"):
        format_invitation(Invitation(2, INVITATION.relay, INVITATION.queue_id, INVITATION.ik, INVITATION.ek))


def test_non_text_input_is_a_type_error():
    with pytest.raises(TypeError):
        parse_invitation(LINK.encode())


visible_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200)
invitations = st.builds(
    Invitation,
    version=st.just(INVITATION_VERSION),
    relay=st.one_of(visible_ascii, st.binary(min_size=8, max_size=8).map(onion_relay)),
    queue_id=st.binary(min_size=24, max_size=24),
    ik=st.binary(min_size=32, max_size=32),
    ek=st.binary(min_size=32, max_size=32),
)


@given(invitations)
def test_any_invitation_round_trips(invitation):
    link = format_invitation(invitation)
    assert link.startswith("onionpost:1/") and link[PAYLOAD_START:].isalnum()
    assert parse_invitation(link) == invitation


@st.composite
def mutated_links(draw, link):
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "swap", "case", "append"]))
        i = draw(st.integers(0, max(len(link) - 1, 0)))
        char = draw(st.one_of(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567/:01 "), st.characters()))
        if kind == "replace" and link:
            link = link[:i] + char + link[i + 1 :]
        elif kind == "insert":
            link = link[:i] + char + link[i:]
        elif kind == "delete":
            link = link[:i] + link[i + 1 :]
        elif kind == "truncate":
            link = link[:i]
        elif kind == "swap" and i + 1 < len(link):
            link = link[:i] + link[i + 1] + link[i] + link[i + 2 :]
        elif kind == "case":
            link = link[:i] + link[i:].swapcase()
        elif kind == "append":
            link += draw(st.text(max_size=5))
    return link


@settings(max_examples=500)
@given(invitations, st.data())
def test_a_mutated_link_parses_identically_or_raises_invitation_error(invitation, data):
    link = format_invitation(invitation)
    mutated = data.draw(mutated_links(link))
    try:
        parsed = parse_invitation(mutated)
    except InvitationError as exc:
        assert str(exc)
    else:
        assert parsed == invitation


@given(st.text(max_size=400))
def test_arbitrary_text_never_crashes(text):
    try:
        parse_invitation(text)
    except InvitationError:
        pass


@given(st.integers(PAYLOAD_START, len(LINK) - 1), st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"))
def test_any_single_substitution_in_the_payload_is_detected(index, char):
    if char == LINK[index]:
        return
    with pytest.raises(InvitationError):
        parse_invitation(replace_at(LINK, index, char))
