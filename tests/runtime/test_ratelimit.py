"""Rate limits: Celery's rate strings, the token bucket, and when a waiting task gives its
slot back."""

from __future__ import annotations

import asyncio

import pytest
from celery.utils.time import rate as celery_rate

from runtime.ratelimit import HOLD_HORIZON, MAX_HELD, RateLimits, TokenBucket, parse_rate


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "rate", ["100/s", "100/m", "100/h", "100", "0.5/s", "2.5/m", "1/h", 10, 0.25, "0", 0, None]
)
def test_rates_read_as_celery_reads_them(rate: str | float | None) -> None:
    assert parse_rate(rate) == pytest.approx(celery_rate(rate))


def test_rate_values() -> None:
    assert parse_rate("100/m") == pytest.approx(100 / 60)
    assert parse_rate("7/h") == pytest.approx(7 / 3600)
    assert parse_rate("3") == 3.0
    assert parse_rate("") == 0.0


@pytest.mark.parametrize("rate", ["10/d", "10/sec", "ten/s", "-1/s", "nan", float("inf")])
def test_rates_celery_cannot_read_are_refused(rate: str | float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with float()
        parse_rate(rate)


def test_the_first_token_is_there_and_the_next_come_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)

    assert [bucket.take() for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    clock.now += 0.25  # the second token is there, the third almost
    assert bucket.take() == pytest.approx(0.15)


def test_an_idle_bucket_holds_no_more_than_its_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(2, clock=clock)
    bucket.take()

    clock.now += 3600  # an hour idle is one token (capacity 1), not 7,200
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.tokens == pytest.approx(-1.0)


def test_a_bucket_with_a_larger_capacity_allows_a_burst() -> None:
    bucket = TokenBucket(1, capacity=3, clock=Clock())

    assert [bucket.take() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_a_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(0)


class Slot:
    """Records what the rate limiter does with a task's slot."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def release(self) -> None:
        self.events.append("release")

    async def reacquire(self) -> None:
        self.events.append("reacquire")


def limits_for_test(
    *, horizon: float = HOLD_HORIZON, max_held: int = MAX_HELD
) -> tuple[RateLimits, list[float], Clock]:
    slept: list[float] = []
    clock = Clock()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    return (
        RateLimits(horizon=horizon, max_held=max_held, clock=clock, sleep=sleep),
        slept,
        clock,
    )


async def test_a_task_due_soon_waits_without_its_slot() -> None:
    limits, slept, _ = limits_for_test()
    first, second = Slot(), Slot()

    assert await limits.wait("t", "2/s", release=first.release, reacquire=first.reacquire) == 0
    waited = await limits.wait("t", "2/s", release=second.release, reacquire=second.reacquire)

    assert waited == pytest.approx(0.5)
    assert slept == [pytest.approx(0.5)]
    assert first.events == []
    assert second.events == ["release", "reacquire"]
    assert limits.held == 0


async def test_a_task_due_after_the_horizon_keeps_its_slot() -> None:
    limits, slept, _ = limits_for_test(horizon=10)
    limits.delay("t", "1/m")  # the first token is taken
    slot = Slot()

    waited = await limits.wait("t", "1/m", release=slot.release, reacquire=slot.reacquire)

    assert waited == pytest.approx(60)
    assert slept == [pytest.approx(60)]
    assert slot.events == []


async def test_no_more_than_max_held_wait_without_a_slot() -> None:
    limits, _, _ = limits_for_test(max_held=1)
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await gate.wait()

    limits._sleep = sleep
    limits.delay("t", "10/s")
    slots = [Slot(), Slot()]
    waiting = [
        asyncio.create_task(limits.wait("t", "10/s", release=s.release, reacquire=s.reacquire))
        for s in slots
    ]
    await asyncio.sleep(0)

    assert limits.held == 1
    assert [s.events for s in slots] == [["release"], []]
    gate.set()
    await asyncio.gather(*waiting)
    assert [s.events for s in slots] == [["release", "reacquire"], []]
    assert limits.held == 0


async def test_task_types_have_their_own_buckets_and_no_limit_is_no_wait() -> None:
    limits, slept, _ = limits_for_test()

    assert limits.delay("a", "1/s") == 0.0
    assert limits.delay("b", "1/s") == 0.0
    assert limits.delay("a", "1/s") == pytest.approx(1.0)
    assert [limits.delay("c", None) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert slept == []
