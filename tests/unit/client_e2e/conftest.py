"""Fixtures for the client.e2e tests (pure: no sockets, no files)."""

from __future__ import annotations

import pytest

from .e2e_helpers import connect


@pytest.fixture
def pair():
    """A freshly connected (inviter_state, joiner_state)."""
    inviter, joiner, payload = connect()
    assert payload == b"hello from inviter"
    return inviter, joiner
