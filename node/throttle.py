"""Per-session rate limit: a token bucket (relay.md "Limits": commands per session)."""

import time
from collections.abc import Callable


class TokenBucket:
    """Allows ``rate`` commands per second on average and bursts of up to ``burst``."""

    __slots__ = ("rate", "burst", "_clock", "_tokens", "_last")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        """Spend one token; False if none is left (the command gets THROTTLED)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
