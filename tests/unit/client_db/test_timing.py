"""client/timing.py: the documented distributions, seeded."""

import random
import statistics

import pytest

from onionpost.client.timing import TimingPolicy


def policy(**changes) -> TimingPolicy:
    return TimingPolicy(**changes).with_rng(random.Random(1))


def test_open_delays_are_uniform_over_the_spread_and_urgent_ones_over_a_quarter():
    p = policy(spread=20.0, link_gap=0.0)
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
    assert (p.gap(), p.send_idle(), p.reopen_delay()) == (None, None, 0.0)


# --- presence: each queue online on its own alternating schedule ------------------------------


def test_by_default_a_queue_link_lives_30_s_then_stays_closed_for_a_gap_of_20_s_on_average():
    p = TimingPolicy().with_rng(random.Random(2))
    lives = [p.lifetime() for _ in range(4000)]
    gaps = [p.gap() for _ in range(4000)]
    assert statistics.mean(lives) == pytest.approx(30, rel=0.06)
    assert statistics.mean(gaps) == pytest.approx(20, rel=0.06)
    assert statistics.stdev(gaps) == pytest.approx(20, rel=0.1)  # exponential: memoryless


def test_a_start_or_a_dropped_link_waits_a_gap_drawn_like_any_other_so_a_relay_cannot_tell_them_apart():
    p = policy(link_gap=20.0, spread=5.0)
    starts = [p.open_delay() for _ in range(4000)]
    reopens = [p.reopen_delay() for _ in range(4000)]
    for delays in (starts, reopens):
        assert max(delays) > 60  # not bounded by the spread: an exponential
        assert statistics.mean(delays) == pytest.approx(20, rel=0.07)
    urgent = [p.open_delay(urgent=True) for _ in range(1000)]  # a message waits to leave: a quarter of the spread
    assert max(urgent) < 1.25


def test_without_a_gap_links_are_replaced_and_open_over_the_spread():
    p = policy(link_gap=0.0, spread=20.0)
    assert p.gap() is None
    assert max(p.open_delay() for _ in range(2000)) < 20


def test_sending_links_close_after_their_own_exponential_idle_time():
    p = policy(send_link_idle=12.0)
    idles = [p.send_idle() for _ in range(4000)]
    assert statistics.mean(idles) == pytest.approx(12, rel=0.06)
    assert policy(send_link_idle=0.0).send_idle() is None  # open until the client stops


def test_link_lifetimes_have_the_configured_mean():
    p = policy(link_lifetime=600.0)
    assert statistics.mean(p.lifetime() for _ in range(4000)) == pytest.approx(600, rel=0.06)


# --- defences against traffic correlation (off by default) ---------------------------------


def test_the_defences_are_off_by_default():
    p = TimingPolicy()
    assert (p.send_wait(), p.cover_gap(), p.release_at(1234.5)) == (0.0, None, 1234.5)


def test_dropped_links_reopen_over_the_reconnect_jitter_or_else_the_spread():
    default = policy(spread=20.0, link_gap=0.0)
    assert 15 < max(default.reopen_delay() for _ in range(2000)) < 20  # without gaps: the spread
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
    ({"link_gap": -1}, "link_gap must be between 0 and 86400"),
    ({"send_link_idle": 1e6}, "send_link_idle must be between 0 and 86400"),
])
def test_bad_defence_settings_are_refused_with_the_setting_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TimingPolicy(**changes)
