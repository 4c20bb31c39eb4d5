"""Trying again the way the client does: a delay doubling from FIRST_BACKOFF up to MAX_BACKOFF.

Used by the client's reconnects (``client.network``) and by anything else
that must wait for a relay the way the product does (the Tor tests), instead
of a fixed single attempt that load can fail.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .link import LinkClosed, RelayError

T = TypeVar("T")

FIRST_BACKOFF = 0.5
"""Seconds before the second attempt."""
MAX_BACKOFF = 20.0
"""Most seconds between two attempts to reach a relay."""
TRANSIENT = (LinkClosed, RelayError, OSError, asyncio.TimeoutError)
"""Failures worth another attempt: the relay or the path to it may come back."""


def next_backoff(delay: float) -> float:
    return min(delay * 2, MAX_BACKOFF)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    within: float,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Call ``attempt`` until it succeeds or ``within`` seconds have passed; re-raise the last failure."""
    deadline = clock() + within
    delay = FIRST_BACKOFF
    while True:
        try:
            return await attempt()
        except transient:
            if clock() + delay >= deadline:
                raise
        await sleep(delay)
        delay = next_backoff(delay)
