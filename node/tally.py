"""Routine failures counted, and logged as one summary line per interval.

A flood of failed sessions or refused connections must not fill the disk: each
such event only increments a counter here, and ``flush`` (called every
``log_interval`` seconds, and at stop) writes one INFO line with the counts of
the interval, or nothing if there were none.
"""

import logging
from collections import Counter

log = logging.getLogger("onionpost.node")


class Tally:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, event: str, n: int = 1) -> None:
        self._counts[event] += n

    def flush(self, interval: float) -> str | None:
        """Log (and return) one line with the counts since the last flush; None if nothing happened."""
        if not self._counts:
            return None
        parts = ", ".join(f"{event}: {n}" for event, n in sorted(self._counts.items()))
        self._counts.clear()
        line = f"in the last {interval:g} s: {parts}"
        log.info("%s", line)
        return line

    def __getitem__(self, event: str) -> int:
        return self._counts[event]
