"""The spec's field tables say what the code does (docs/protocol/relay.md)."""

import re
from pathlib import Path

import pytest

from onionpost.proto.frames import COMMANDS, RESPONSES, Command

SPEC = (Path(__file__).resolve().parents[3] / "docs" / "protocol" / "relay.md").read_text()


def describe(frame) -> str:
    return ", ".join(f"`{name}`: {kind.describe()}" for name, kind in frame.FIELDS.items())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_section_with_its_fields(name):
    command: type[Command] = COMMANDS[name]
    section = re.search(rf"^### {name}: .*?(?=^### |^## )", SPEC, re.S | re.M)
    assert section, f"no '### {name}:' section in the spec"
    row = section.group(0).split("|---|---|---|---|")[1].strip().splitlines()[0]
    q_cell, fields_cell = [c.strip() for c in row.strip("|").split("|")][:2]
    assert (q_cell != "nil") == command.NEEDS_QUEUE
    assert fields_cell == (describe(command) or "—")


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_every_response_is_in_the_table_with_its_fields(name):
    row = re.search(rf"^\| `{name}` \| ([^|]*) \|", SPEC, re.M)
    assert row, f"response {name} missing from the spec"
    assert row.group(1).strip() == describe(RESPONSES[name])


def test_every_error_code_is_documented():
    from onionpost.proto.errors import ErrorCode

    for code in ErrorCode:
        fatal = "yes" if code.fatal else "no"
        assert re.search(rf"^\| `{code.value}` \| {fatal} \|", SPEC, re.M), code
