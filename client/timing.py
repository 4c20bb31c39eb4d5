"""When each queue's link opens and closes, and when automatic messages leave (docs/privacy.md).

A relay sees only when a queue's session opens, subscribes, receives, acks
and closes. If one person's queues do these things at the same instants, or
a receipt leaves on one queue right after an ACK on the other, a relay links
them by timing alone. So every queue lives on its own random schedule:

- **opening**: after a start, a wake-up or a dropped link, each queue's link
  opens after its own delay: a gap (below), or with ``link_gap = 0`` a draw
  uniform in ``[0, spread)``. Queues with an outgoing message waiting draw
  from ``[0, spread / 4)`` instead.
- **presence**: a queue is not online whenever the device is. Its link
  lives an exponentially distributed time (mean ``link_lifetime``, 30 s),
  closes, and the next one opens after an exponentially distributed gap
  (mean ``link_gap``, 20 s), independently per queue. A device coming back
  online, or a link that dropped, waits a gap drawn the same way, so the
  relay cannot tell a device's start from a queue's ordinary gap. What a
  relay sees of each queue is then its own alternating process, and the
  times a person is online show only faintly in it (docs/lab.md measured
  why: without this, the overlap of two queues' online time linked a
  person's queues). The cost: a message that arrives during a gap waits for
  its end (docs/privacy.md). With ``link_gap = 0`` links are instead
  replaced after their lifetime, the new one subscribing before the old one
  closes (no gap in delivery), and open at uniform times in ``[0, spread)``.
- **sending links**: a link used only to send to a contact closes after its
  own exponentially distributed idle time (mean ``send_link_idle``, 15 s),
  and opens again with the next message; a long-lived sending link would add
  the writer's online time to the queue's, which links a conversation's two
  queues.
- **closing**: a daemon that stops closes each link after its own delay,
  uniform in ``[0, spread)``, instead of all at once.
- **sending after a start**: each contact's waiting messages leave after
  their own delay, uniform in ``[0, spread / 4)``, not in one burst.
- **automatic messages**: a delivery receipt (``receipts="delay"``) waits an
  exponentially distributed delay (mean ``receipt_delay``, at most 4x that);
  ``"next"`` holds it until the next message the user sends to that contact;
  ``"off"`` sends none. Profile updates and rotation messages wait an
  exponential delay with mean ``automatic_delay``.

Defences against traffic correlation, all off by default (docs/privacy.md
measures each one's effect and cost; the lab's ``defences`` scenario sweeps them):

- **reconnect jitter**: a link that dropped reopens after a delay uniform in
  ``[0, reconnect_jitter)`` (None: the ``spread``; 0: at once).
- **send delay**: each message the user sends waits an exponentially
  distributed delay of mean ``send_delay`` before it may leave.
- **cover traffic**: dummy messages (payload ``cover``, dropped silently by the
  recipient) on each contact's queue, ``cover_rate`` per minute, as a Poisson
  process (``cover_mode="poisson"``) or evenly spaced from a random phase
  (``"constant"``).
- **batching**: every outgoing message waits for the end of the current
  ``batch``-second window of the wall clock (ends at multiples of ``batch``,
  the same instants for every client), and they leave together.

All draws use the injected ``random.Random`` (tests seed it). The costs in
latency are measured in docs/privacy.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import math

RECEIPT_MODES = ("delay", "next", "off")
COVER_MODES = ("poisson", "constant")
MAX_COVER_RATE = 60.0
"""Cover messages per minute per contact at most (each one is a full 15 KB block on the wire)."""


@dataclass(frozen=True)
class TimingPolicy:
    spread: float = 20.0
    """Seconds over which (re)opened links are spread."""
    link_lifetime: float = 30.0
    """Mean seconds a queue's link lives before it closes or is replaced (0: links live until they drop)."""
    link_gap: float = 20.0
    """Mean seconds a queue's link stays closed between two lifetimes (0: no gap, links are replaced)."""
    send_link_idle: float = 15.0
    """Mean seconds a link used only for sending stays open after a send (0: until the client stops)."""
    receipts: str = "delay"
    receipt_delay: float = 30.0
    automatic_delay: float = 5.0
    reconnect_jitter: float | None = None
    """Seconds over which a dropped link reopens (None: ``spread``)."""
    send_delay: float = 0.0
    """Mean seconds (exponential) a user message waits before it may leave; 0: off."""
    cover_rate: float = 0.0
    """Cover messages per minute on each contact's queue; 0: none."""
    cover_mode: str = "poisson"
    batch: float = 0.0
    """Seconds per batching window; 0: no batching."""
    rng: random.Random = field(default_factory=random.SystemRandom, compare=False, repr=False)

    def __post_init__(self):
        if self.receipts not in RECEIPT_MODES:
            raise ValueError(f"receipts must be one of {', '.join(RECEIPT_MODES)}, not {self.receipts!r}")
        if self.cover_mode not in COVER_MODES:
            raise ValueError(f"cover_mode must be one of {', '.join(COVER_MODES)}, not {self.cover_mode!r}")
        for name in ("spread", "link_lifetime", "link_gap", "send_link_idle", "receipt_delay", "automatic_delay",
                     "reconnect_jitter", "send_delay", "batch"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 86400):
                raise ValueError(f"{name} must be between 0 and 86400 seconds, not {value!r}")
        if not (isinstance(self.cover_rate, (int, float)) and 0 <= self.cover_rate <= MAX_COVER_RATE):
            raise ValueError(f"cover_rate must be between 0 and {MAX_COVER_RATE:g} per minute, not {self.cover_rate!r}")

    @classmethod
    def immediate(cls) -> TimingPolicy:
        """No defence: everything at once (the one-shot CLI's old behaviour; tests and baselines)."""
        return cls(spread=0.0, link_lifetime=0.0, link_gap=0.0, send_link_idle=0.0, receipt_delay=0.0,
                   automatic_delay=0.0)

    def with_rng(self, rng: random.Random) -> TimingPolicy:
        return replace(self, rng=rng)

    def open_delay(self, *, urgent: bool = False) -> float:
        """Seconds before a queue's link opens after a start: a gap, as between two lifetimes; without
        gaps, uniform over the spread. ``urgent`` (a message waits to leave): uniform over a quarter of it."""
        gap = None if urgent else self.gap()
        if gap is not None:
            return gap
        spread = self.spread / 4 if urgent else self.spread
        return self.rng.uniform(0.0, spread) if spread > 0 else 0.0

    def reopen_delay(self) -> float:
        """Seconds before a dropped link reopens (each queue its own draw): uniform over
        ``reconnect_jitter`` if set, else a gap, else uniform over the spread."""
        gap = self.gap() if self.reconnect_jitter is None else None
        if gap is not None:
            return gap
        jitter = self.spread if self.reconnect_jitter is None else self.reconnect_jitter
        return self.rng.uniform(0.0, jitter) if jitter > 0 else 0.0

    def gap(self) -> float | None:
        """Seconds a queue's link stays closed after its lifetime ended; None: replace it without a gap."""
        if self.link_gap <= 0:
            return None
        return self.rng.expovariate(1.0 / self.link_gap)

    def send_wait(self) -> float:
        """Seconds a message the user sends waits before it may leave."""
        return self.rng.expovariate(1.0 / self.send_delay) if self.send_delay > 0 else 0.0

    def cover_gap(self, *, first: bool = False) -> float | None:
        """Seconds until a contact's next cover message (None: no cover). The first gap of a
        constant-rate stream is a random phase in ``[0, period)``."""
        if self.cover_rate <= 0:
            return None
        period = 60.0 / self.cover_rate
        if self.cover_mode == "constant":
            return self.rng.uniform(0.0, period) if first else period
        return self.rng.expovariate(1.0 / period)

    def release_at(self, ready: float) -> float:
        """When a message ready at ``ready`` (wall clock) may leave: with batching, the next window end."""
        if self.batch <= 0:
            return ready
        return math.floor(ready / self.batch + 1) * self.batch

    def send_idle(self) -> float | None:
        """Seconds a link used only for sending stays open after a send: exponential, mean ``send_link_idle``;
        None: until the client stops."""
        if self.send_link_idle <= 0:
            return None
        return self.rng.expovariate(1.0 / self.send_link_idle)

    def close_delay(self) -> float:
        """Seconds before a link closes when the client stops."""
        return self.rng.uniform(0.0, self.spread) if self.spread > 0 else 0.0

    def lifetime(self) -> float | None:
        """Seconds until this link is replaced, or None to keep it until it drops."""
        if self.link_lifetime <= 0:
            return None
        return self.rng.expovariate(1.0 / self.link_lifetime)

    def receipt_wait(self) -> float | None:
        """Seconds a receipt waits before it may leave; None: held for the next user message."""
        if self.receipts == "next":
            return None
        return self._capped_exponential(self.receipt_delay)

    def automatic_wait(self) -> float:
        return self._capped_exponential(self.automatic_delay)

    def _capped_exponential(self, mean: float) -> float:
        if mean <= 0:
            return 0.0
        return min(self.rng.expovariate(1.0 / mean), 4 * mean)
