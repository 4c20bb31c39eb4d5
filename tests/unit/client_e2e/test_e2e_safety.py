"""Security code: same on both sides, differs under a man in the middle."""

from __future__ import annotations

import re

import pytest

from onionpost.client.e2e import (
    accept_request,
    codes_match,
    complete_join,
    create_invitation,
    create_request,
    format_code,
    open_request,
    safety_code,
    safety_code_for_state,
)

from .e2e_helpers import connect

K1, K2 = bytes(range(32)), bytes(range(32, 64))
#: Golden vector: changing the derivation changes every user's code, so it
#: must be a deliberate (versioned) decision.
GOLDEN = "14491 80129 93027 62959 94506 97999 21889 77434 31682 15143 75406 09041"


def test_golden_vector_and_shape():
    code = safety_code(K1, K2)
    assert code == GOLDEN
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", code)


def test_order_independent():
    assert safety_code(K1, K2) == safety_code(K2, K1)


def test_both_sides_of_a_connection_compute_the_same_code():
    inviter, joiner, _ = connect()
    assert safety_code_for_state(inviter) == safety_code_for_state(joiner)


def test_man_in_the_middle_gives_different_codes():
    """Mallory replaces the invitation shown to the joiner with her own, and
    relays: the inviter and the joiner end up with different identity keys."""
    secrets_a, invitation_a = create_invitation()
    secrets_m, invitation_m = create_invitation()  # Mallory's invitation
    pending_b, request_b = create_request(invitation_m, b"bob")  # Bob scanned Mallory's QR
    mallory_to_bob, accept_b = accept_request(secrets_m, open_request(secrets_m, request_b), b"")
    bob, _ = complete_join(pending_b, accept_b)
    pending_m, request_m = create_request(invitation_a, b"mallory")  # Mallory joins Alice
    alice, accept_m = accept_request(secrets_a, open_request(secrets_a, request_m), b"")
    complete_join(pending_m, accept_m)
    assert safety_code_for_state(alice) != safety_code_for_state(bob)
    assert not codes_match(safety_code_for_state(alice), safety_code_for_state(bob))


def test_codes_match_is_lenient_about_separators_only():
    code = safety_code(K1, K2)
    digits = code.replace(" ", "")
    assert codes_match(code, digits)
    assert codes_match(code, format_code(digits, groups_per_line=4))
    assert codes_match(code, "  " + "-".join(code.split()) + "\n")
    assert codes_match(code, code.replace(" ", ".", 3))
    wrong = ("0" if digits[0] != "0" else "1") + digits[1:]
    assert not codes_match(code, wrong)
    assert not codes_match(code, digits[:-1])
    assert not codes_match(code, digits + "0")
    assert not codes_match(code, digits[:-1] + "x")
    assert not codes_match(code, "")
    assert not codes_match(code, None)
    assert not codes_match(code, "١" * 60)  # non-ASCII digits are not digits here


def test_format_code_lines():
    digits = safety_code(K1, K2).replace(" ", "")
    lines = format_code(digits, groups_per_line=4).split("\n")
    assert len(lines) == 3 and all(len(line.split()) == 4 for line in lines)


def test_bad_key_length():
    with pytest.raises(ValueError):
        safety_code(K1, b"short")
