"""Render the torrc templates in ``torconfig/templates`` (string.Template)."""

import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from string import Template

DETAIL_LOG_ENV = "ONIONPOST_TOR_LOG"
"""Set to ``info`` or ``debug``: every tor onionpost starts also logs at that level to
``<DataDirectory>/<level>.log`` (for studying Tor's behaviour; these logs grow fast)."""
DETAIL_LOG_LEVELS = ("info", "debug")

# Roles that join the private network: base + testnet join settings + role.
TESTNET_ROLES = ("authority", "relay", "client", "onion_host")
ROLES = TESTNET_ROLES + ("real_client",)


def template_text(name: str) -> str:
    """Return the raw text of ``templates/<name>.torrc``."""
    return resources.files(__package__).joinpath("templates", f"{name}.torrc").read_text()


def _check(key: str, value: object) -> str:
    text = str(value)
    # A torrc value runs to the end of the line; '#' starts a comment.
    if not text or any(c in text for c in "\n\r#") or text.startswith('"'):
        raise ValueError(f"unusable torrc value for {key}: {text!r}")
    return text


def _substitute(name: str, values: Mapping[str, object], raw: Mapping[str, str] = {}) -> str:
    checked = {key: _check(key, value) for key, value in values.items()}
    return Template(template_text(name)).substitute({**checked, **raw})


def render_join(dir_authorities: Iterable[str], geoip_file: str) -> str:
    """Render the settings any tor needs to join the private network.

    Args:
        dir_authorities: complete ``DirAuthority ...`` lines.
        geoip_file: path of an empty file (GeoIP lookups are useless here).
    """
    lines = [_check("dir_authorities", line) for line in dir_authorities]
    if not lines or not all(line.startswith("DirAuthority ") for line in lines):
        raise ValueError("dir_authorities must be DirAuthority lines")
    return _substitute("testnet", {"geoip_file": geoip_file}, {"dir_authorities": "\n".join(lines)})


def render_torrc(role: str, values: Mapping[str, object], join: str | None = None) -> str:
    """Render a complete torrc for one role.

    Args:
        role: one of ``ROLES``.
        values: placeholder values for ``base.torrc`` and the role template.
        join: output of ``render_join``; required for the private-network roles.

    Returns:
        The torrc text. Raises KeyError for a missing placeholder value.
    """
    if role not in ROLES:
        raise ValueError(f"unknown tor role {role!r}")
    if (role in TESTNET_ROLES) != (join is not None):
        raise ValueError(f"role {role!r} {'needs' if join is None else 'takes no'} join settings")
    parts = [_substitute("base", values)]
    level = os.environ.get(DETAIL_LOG_ENV, "").strip().lower()
    if level in DETAIL_LOG_LEVELS:
        parts.append(f"Log {level} file " + _check("data_dir", Path(str(values["data_dir"])) / f"{level}.log"))
    if join is not None:
        parts.append(join)
    parts.append(_substitute(role, values))
    return "\n".join(part.rstrip("\n") for part in parts) + "\n"
