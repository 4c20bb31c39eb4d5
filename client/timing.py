"""When each queue's link opens and closes, and when automatic messages leave (docs/privacy.md).

A relay sees only when a queue's session opens, subscribes, receives, acks
and closes. If one person's queues do these things at the same instants, or
a receipt leaves on one queue right after an ACK on the other, a relay links
them by timing alone. So every queue lives on its own random schedule:

- **opening**: after a start, a wake-up or a dropped link, each queue's link
  opens after its own delay drawn uniformly from ``[0, spread)``. Queues
  with an outgoing message waiting draw from ``[0, spread / 4)`` instead.
- **lifetime**: an open link is replaced after an exponentially distributed
  lifetime (mean ``link_lifetime``), independently per queue, so later
  (re)subscriptions are a Poisson process per queue, not a person's rhythm.
  The new link subscribes before the old one closes: no gap in delivery.
- **sending links**: a link used only to send to a contact closes after its
  own exponentially distributed idle time (mean ``link_lifetime / 6``, 5 min),
  and opens again with the next message.
- **closing**: a daemon that stops closes each link after its own delay,
  uniform in ``[0, spread)``, instead of all at once.
- **sending after a start**: each contact's waiting messages leave after
  their own delay, uniform in ``[0, spread / 4)``, not in one burst.
- **automatic messages**: a delivery receipt (``receipts="delay"``) waits an
  exponentially distributed delay (mean ``receipt_delay``, at most 4x that);
  ``"next"`` holds it until the next message the user sends to that contact;
  ``"off"`` sends none. Profile updates and rotation messages wait an
  exponential delay with mean ``automatic_delay``.

All draws use the injected ``random.Random`` (tests seed it). The costs in
latency are measured in docs/privacy.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

RECEIPT_MODES = ("delay", "next", "off")


@dataclass(frozen=True)
class TimingPolicy:
    spread: float = 20.0
    """Seconds over which (re)opened links are spread."""
    link_lifetime: float = 1800.0
    """Mean seconds a link lives before it is replaced (0: links live until they drop)."""
    receipts: str = "delay"
    receipt_delay: float = 30.0
    automatic_delay: float = 5.0
    rng: random.Random = field(default_factory=random.SystemRandom, compare=False, repr=False)

    def __post_init__(self):
        if self.receipts not in RECEIPT_MODES:
            raise ValueError(f"receipts must be one of {', '.join(RECEIPT_MODES)}, not {self.receipts!r}")
        for name in ("spread", "link_lifetime", "receipt_delay", "automatic_delay"):
            value = getattr(self, name)
            if not 0 <= value <= 86400:
                raise ValueError(f"{name} must be between 0 and 86400 seconds, not {value!r}")

    @classmethod
    def immediate(cls) -> TimingPolicy:
        """No defence: everything at once (the one-shot CLI's old behaviour; tests and baselines)."""
        return cls(spread=0.0, link_lifetime=0.0, receipt_delay=0.0, automatic_delay=0.0)

    def with_rng(self, rng: random.Random) -> TimingPolicy:
        return replace(self, rng=rng)

    def open_delay(self, *, urgent: bool = False) -> float:
        """Seconds before a queue's link (re)opens."""
        spread = self.spread / 4 if urgent else self.spread
        return self.rng.uniform(0.0, spread) if spread > 0 else 0.0

    def send_link_idle(self) -> float | None:
        """Seconds a link used only for sending stays open after a send: exponential, mean ``link_lifetime / 6``."""
        if self.link_lifetime <= 0:
            return None
        return self.rng.expovariate(6.0 / self.link_lifetime)

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
