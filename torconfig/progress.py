"""One progress display for every long Tor wait: a client's or a node's bootstrap, the private network's start."""

import sys
from typing import TextIO


def print_progress(summary: str, percent: float, *, label: str = "tor", stream: TextIO | None = None) -> None:
    """One updating bar on a terminal, else one line per step (logs and pipes stay readable)."""
    stream = stream or sys.stderr
    filled = int(max(0.0, min(percent, 100.0)) / 5)
    line = f"{label} [{'#' * filled:<20}] {percent:3.0f}% {summary}"
    if stream.isatty():
        print(f"\r{line[:78]:<78}", end="\n" if percent >= 100 else "", file=stream, flush=True)
    else:
        print(line, file=stream, flush=True)
