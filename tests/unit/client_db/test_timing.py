"""client/timing.py: the documented distributions, seeded."""

import random
import statistics

import pytest

from onionpost.client.timing import TimingPolicy


def policy(**changes) -> TimingPolicy:
    return TimingPolicy(**changes).with_rng(random.Random(1))


def test_open_delays_are_uniform_over_the_spread_and_urgent_ones_over_a_quarter():
    p = policy(spread=20.0)
    delays = [p.open_delay() for _ in range(4000)]
    assert 0 <= min(delays) and max(delays) < 20
    assert statistics.mean(delays) == pytest.approx(10, abs=0.5)
    urgent = [p.open_delay(urgent=True) for _ in range(4000)]
    assert max(urgent) < 5 and statistics.mean(urgent) == pytest.approx(2.5, abs=0.2)


def test_receipt_delays_are_exponential_and_capped():
    p = policy(receipt_delay=20.0)
    delays = [p.receipt_wait() for _ in range(4000)]
    assert max(delays) <= 80
    assert statistics.median(delays) == pytest.approx(20 * 0.693, rel=0.1)  # the exponential's median


def test_receipt_modes():
    assert policy(receipts="next").receipt_wait() is None  # held for the next user message
    with pytest.raises(ValueError, match="receipts must be one of"):
        TimingPolicy(receipts="sometimes")
    with pytest.raises(ValueError, match="spread must be between"):
        TimingPolicy(spread=-1)


def test_immediate_has_no_delays():
    p = TimingPolicy.immediate()
    assert (p.open_delay(), p.receipt_wait(), p.automatic_wait(), p.close_delay(), p.lifetime()) == (0, 0, 0, 0, None)


def test_link_lifetimes_have_the_configured_mean():
    p = policy(link_lifetime=600.0)
    assert statistics.mean(p.lifetime() for _ in range(4000)) == pytest.approx(600, rel=0.06)
