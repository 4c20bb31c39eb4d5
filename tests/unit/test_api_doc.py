"""docs/api.md and the code's method table say the same thing (as test_spec_tables.py does for the relay protocol)."""

import re
from pathlib import Path

from onionpost.client import api

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def table_rows(heading: str) -> list[list[str]]:
    section = DOC.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def test_every_method_is_documented_with_its_params_result_and_summary():
    documented = {}
    for method, params, result, summary in table_rows("## Methods"):
        documented[method.strip("`")] = (params, result.strip("`"), summary)
    assert list(documented) == list(api.METHODS), "docs/api.md lists other methods than client/api.py"
    for name, spec in api.METHODS.items():
        params, result, summary = documented[name]
        expected = ", ".join(f"`{p.name}{'' if p.required else '?'}: {p.type}`" for p in spec.params)
        assert params == expected, (name, params, expected)
        assert result == spec.result, name
        assert summary == spec.summary, name


def test_every_event_kind_is_documented():
    rows = {kind.strip("`"): meaning for kind, meaning in table_rows("## Events")}
    assert rows == api.EVENT_KINDS


def test_error_codes_in_the_doc_are_the_codes_in_the_code():
    codes = {int(code) for code, *_ in table_rows("## Errors")}
    assert codes == {api.PARSE_ERROR, api.INVALID_REQUEST, api.METHOD_NOT_FOUND, api.INVALID_PARAMS,
                     api.INTERNAL_ERROR, api.FAILED}


def test_the_cli_commands_and_the_methods_match():
    """Method names are the CLI's command names (a dot for groups); the daemon-only ones excepted."""
    from typer.main import get_command

    from onionpost.cli import app

    root = get_command(app)
    names = set()
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            names |= {f"{name}.{sub}" for sub in command.commands}
        else:
            names.add(name)
    api_only = {m for m, spec in api.METHODS.items() if spec.daemon_only}
    assert set(api.METHODS) - api_only <= names, set(api.METHODS) - api_only - names
    assert re.search(r"\bdaemon\b", " ".join(names))
