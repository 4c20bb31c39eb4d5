"""The cover loop (QueueRunner._cover_loop) on a fake clock: how many cover messages, when, for whom."""

import asyncio
import random

import pytest

from onionpost.client.connections import QueueRunner
from onionpost.client.timing import TimingPolicy

pytestmark = pytest.mark.timeout(30)


class FakeStore:
    def __init__(self, contacts):
        self.contacts = contacts

    def connected_contacts(self):
        return list(self.contacts)


class Runner(QueueRunner):
    """Just what the cover loop uses; covers are recorded instead of encrypted and queued."""

    def __init__(self, timing: TimingPolicy, contacts=(1, 2)):
        self.now = 1_700_000_000.0
        self.clock = lambda: self.now
        self.timing = timing.with_rng(random.Random(4))
        self.store = FakeStore(contacts)
        self._retry_at = {}
        self._wake = None
        self.covers: list[tuple[float, int]] = []

    def _queue_cover(self, contact_id):
        self.covers.append((self.now, contact_id))

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds

        async def sleep(delay):
            self.now += delay
            if self.now >= end:
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            asyncio.run(self._cover_loop(sleep=sleep))


def times(runner: Runner, contact: int) -> list[float]:
    return [t for t, c in runner.covers if c == contact]


def test_poisson_cover_reaches_every_contact_at_the_configured_rate():
    runner = Runner(TimingPolicy(cover_rate=6.0))  # 6 a minute: 600 in 100 minutes
    runner.run_for(6000)
    for contact in (1, 2):
        assert 520 <= len(times(runner, contact)) <= 680
    # Independent schedules: the two contacts' covers do not leave at the same instants.
    assert not set(times(runner, 1)) & set(times(runner, 2))


def test_constant_cover_is_evenly_spaced_after_a_random_phase():
    runner = Runner(TimingPolicy(cover_rate=12.0, cover_mode="constant"), contacts=(1,))
    start = runner.now
    runner.run_for(300)
    sent = times(runner, 1)
    assert {round(b - a, 6) for a, b in zip(sent, sent[1:])} == {5.0}
    assert 0 < sent[0] - start < 5 and len(sent) in (59, 60)


def test_no_cover_piles_up_for_a_contact_whose_relay_is_failing():
    runner = Runner(TimingPolicy(cover_rate=30.0), contacts=(1, 2))
    runner._retry_at[2] = (runner.now + 1e6, 1.0)
    runner.run_for(600)
    assert len(times(runner, 1)) > 200 and times(runner, 2) == []


def test_new_contacts_get_cover_and_gone_ones_stop():
    runner = Runner(TimingPolicy(cover_rate=30.0), contacts=[1])
    runner.run_for(300)
    runner.store.contacts[:] = [2]
    runner.run_for(300)
    assert max(times(runner, 1)) < min(times(runner, 2))
