"""retrying(): the client's backoff, on a fake clock."""

import pytest

from onionpost.transport import LinkClosed
from onionpost.transport.retry import FIRST_BACKOFF, MAX_BACKOFF, next_backoff, retrying


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: BaseException):
    calls = []

    async def attempt():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return len(calls)

    return attempt, calls


async def test_transient_failures_are_retried_with_a_doubling_delay():
    fake = FakeTime()
    attempt, calls = failing(4, ConnectionRefusedError("closed port"))
    assert await retrying(attempt, within=60, clock=fake.clock, sleep=fake.sleep) == 5
    assert fake.sleeps == [0.5, 1.0, 2.0, 4.0]


async def test_the_last_failure_is_raised_once_the_time_is_up():
    fake = FakeTime()
    attempt, calls = failing(100, LinkClosed("gone"))
    with pytest.raises(LinkClosed):
        await retrying(attempt, within=10, clock=fake.clock, sleep=fake.sleep)
    assert sum(fake.sleeps) < 10 and len(calls) == len(fake.sleeps) + 1


async def test_other_errors_are_not_retried():
    fake = FakeTime()
    attempt, calls = failing(1, ValueError("a bug, not a network failure"))
    with pytest.raises(ValueError):
        await retrying(attempt, within=60, clock=fake.clock, sleep=fake.sleep)
    assert calls == [1] and fake.sleeps == []


def test_backoff_is_capped():
    delay, seen = FIRST_BACKOFF, []
    for _ in range(12):
        seen.append(delay)
        delay = next_backoff(delay)
    assert seen[:3] == [0.5, 1.0, 2.0] and max(seen) == MAX_BACKOFF == seen[-1]
