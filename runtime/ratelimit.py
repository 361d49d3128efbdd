"""Rate limits per task type, per worker, as Celery's worker applies them.

A task's ``rate_limit`` is Celery's: ``"100/s"``, ``"100/m"``, ``"100/h"``, or a number of tasks
per second (``"100"``, ``100``, ``0.5``); ``None`` or 0 means no limit. Each worker gives each
rate-limited task type a token bucket of capacity 1, as Celery's consumer does
(``TokenBucket(rate, capacity=1)``): after a quiet spell the first task starts at once, and the
next ones ``1/rate`` seconds apart. N workers together run up to N times the rate.

Where a task waits: after its ETA, before it is acknowledged and before it starts, so a task
still waiting for its token is unacknowledged and goes back to the broker if the worker stops.
Tasks waiting for the same task type's tokens start in the order they arrived.

Slots: a task whose token is due within :data:`HOLD_HORIZON` seconds gives its slot back while
it waits (at most :data:`MAX_HELD` such tasks per worker), so with prefetch 1 the worker goes on
receiving, and other task types on the same queue are not held up; when its token is due it
takes a slot again, before anything the broker delivers next. A task whose token is further
away keeps its slot while it waits (as every rate-limited task does in Celery), which bounds
how many messages a worker holds back from other workers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

__all__ = ["HOLD_HORIZON", "MAX_HELD", "RateLimits", "TokenBucket", "parse_rate"]

#: A task whose token is due within this many seconds waits without its slot.
HOLD_HORIZON = 10.0
#: At most this many tasks per worker wait without a slot (each is an unacknowledged message).
MAX_HELD = 1000

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(rate: str | float | None) -> float:
    """Tasks per second for a Celery rate limit (``"100/m"`` is 100/60); 0.0 for no limit.

    Raises ``ValueError`` for anything Celery would not read as a rate.
    """
    if rate is None or rate == "":
        return 0.0
    if isinstance(rate, str):
        count, _, unit = rate.partition("/")
        if (unit or "s") not in _UNITS:
            raise ValueError(f"rate limit {rate!r}: the unit must be s, m or h")
        per_second = float(count) / _UNITS[unit or "s"]
    else:
        per_second = float(rate)
    if not math.isfinite(per_second) or per_second < 0:
        raise ValueError(f"rate limit {rate!r}: not a number of tasks per second")
    return per_second


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``capacity``; each task takes one.

    :meth:`take` always takes a token, if need be one that is not there yet, and says how
    long until it is: the bucket runs into debt, so tasks waiting for tokens are served in
    the order they asked, each ``1/rate`` seconds after the one before.
    """

    def __init__(
        self, rate: float, capacity: float = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a token bucket needs a positive rate, not {rate}")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now; negative while tasks wait for tokens not yet there."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    def take(self) -> float:
        """Take one token: the seconds until it is there (0.0 when it is there now)."""
        self._tokens = self.tokens - 1
        return max(0.0, -self._tokens / self.rate)


class RateLimits:
    """One worker's token buckets, one per rate-limited task type, made on first use."""

    def __init__(
        self,
        *,
        horizon: float = HOLD_HORIZON,
        max_held: int = MAX_HELD,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.horizon = horizon
        self.max_held = max_held
        self.held = 0
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket | None] = {}

    def delay(self, name: str, rate: str | float | None) -> float:
        """Take a token for a task of type ``name``: the seconds to wait for it (0.0: none)."""
        if name not in self._buckets:  # None: seen, and not limited
            per_second = parse_rate(rate)
            self._buckets[name] = TokenBucket(per_second, clock=self._clock) if per_second else None
        bucket = self._buckets[name]
        return 0.0 if bucket is None else bucket.take()

    def reset(self, name: str) -> None:
        """Forget task type ``name``'s bucket: its next task makes one at the rate the task
        has then (``rate_limit`` at run time, as Celery's ``reset_rate_limits``). Tasks
        already waiting for a token keep the wait they were given."""
        self._buckets.pop(name, None)

    async def wait(
        self,
        name: str,
        rate: str | float | None,
        *,
        release: Callable[[], None],
        reacquire: Callable[[], Awaitable[None]],
    ) -> float:
        """Wait for a token of task type ``name``; the seconds waited.

        ``release`` gives the caller's slot back and ``reacquire`` takes one again: a task
        whose token is due within :attr:`horizon` waits without its slot, while fewer than
        :attr:`max_held` do.
        """
        delay = self.delay(name, rate)
        if delay <= 0:
            return 0.0
        if delay > self.horizon or self.held >= self.max_held:
            await self._sleep(delay)
            return delay
        self.held += 1
        release()
        try:
            await self._sleep(delay)
        finally:
            self.held -= 1
        await reacquire()
        return delay
