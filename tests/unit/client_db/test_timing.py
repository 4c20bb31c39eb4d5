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


# --- defences against traffic correlation (off by default) ---------------------------------


def test_the_defences_are_off_by_default():
    p = TimingPolicy()
    assert (p.send_wait(), p.cover_gap(), p.release_at(1234.5)) == (0.0, None, 1234.5)


def test_dropped_links_reopen_over_the_reconnect_jitter_or_else_the_spread():
    default = policy(spread=20.0)
    assert max(default.reopen_delay() for _ in range(2000)) > 15  # default: the spread
    p = policy(spread=20.0, reconnect_jitter=4.0)
    jittered = [p.reopen_delay() for _ in range(2000)]
    assert 0 <= min(jittered) and max(jittered) < 4 and statistics.mean(jittered) == pytest.approx(2, abs=0.2)
    assert policy(spread=20.0, reconnect_jitter=0.0).reopen_delay() == 0.0


def test_send_delays_are_exponential_with_the_configured_mean():
    p = policy(send_delay=3.0)
    delays = [p.send_wait() for _ in range(4000)]
    assert min(delays) >= 0 and statistics.mean(delays) == pytest.approx(3, rel=0.06)
    assert statistics.median(delays) == pytest.approx(3 * 0.693, rel=0.1)


def test_poisson_cover_has_the_configured_rate():
    p = policy(cover_rate=6.0)  # per minute: a mean gap of 10 s
    gaps = [p.cover_gap() for _ in range(4000)]
    assert statistics.mean(gaps) == pytest.approx(10, rel=0.06)
    assert statistics.stdev(gaps) == pytest.approx(10, rel=0.1)  # exponential: sd = mean


def test_constant_cover_is_evenly_spaced_from_a_random_phase():
    p = policy(cover_rate=12.0, cover_mode="constant")
    assert {p.cover_gap() for _ in range(10)} == {5.0}
    phases = [p.cover_gap(first=True) for _ in range(2000)]
    assert 0 <= min(phases) and max(phases) < 5 and statistics.mean(phases) == pytest.approx(2.5, abs=0.2)


def test_batching_releases_at_the_end_of_the_current_window_of_the_clock():
    p = policy(batch=10.0)
    for ready, released in ((1000.0, 1010.0), (1003.2, 1010.0), (1009.99, 1010.0), (1010.5, 1020.0)):
        assert p.release_at(ready) == released
    # Everything ready within one window leaves at the same instant, on every client.
    assert len({p.release_at(1000 + k / 7) for k in range(60)}) == 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"send_delay": -1}, "send_delay must be between 0 and 86400"),
    ({"batch": 1e9}, "batch must be between 0 and 86400"),
    ({"reconnect_jitter": -0.5}, "reconnect_jitter must be between"),
    ({"cover_rate": -1}, "cover_rate must be between 0 and 60"),
    ({"cover_rate": 600}, "cover_rate must be between 0 and 60"),
    ({"cover_mode": "bursty"}, "cover_mode must be one of poisson, constant"),
])
def test_bad_defence_settings_are_refused_with_the_setting_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TimingPolicy(**changes)
