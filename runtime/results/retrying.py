"""Retrying a result write while the backend is away, as Celery's ``result_backend_always_retry``.

A worker that loses its result backend mid-task has run the task; dropping the record would
leave the client's ``get()`` waiting forever. :class:`StoreRetry` keeps trying with
exponential backoff and full jitter (a fleet that lost the same Redis does not return in
lock-step), only for errors that say the backend did not answer
(:class:`~runtime.errors.BackendUnavailable`); a refusal (a script error, a full disk) is
raised at once, since waiting will not change it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from runtime.errors import BackendUnavailable

__all__ = ["NO_RETRY", "StoreRetry"]

T = TypeVar("T")

log = structlog.get_logger("celeriac.results")


@dataclass(frozen=True, slots=True)
class StoreRetry:
    """Celery's four settings: ``result_backend_always_retry``, ``result_backend_max_retries``
    (``math.inf``: while the worker runs), ``result_backend_base_sleep_between_retries_ms``
    and ``result_backend_max_sleep_between_retries_ms``."""

    always_retry: bool = True
    max_retries: float = math.inf
    base_sleep_ms: float = 10.0
    max_sleep_ms: float = 10_000.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_sleep_ms < 0 or self.max_sleep_ms < 0:
            raise ValueError(f"result backend retry settings must not be negative: {self}")

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 first): full jitter under
        ``base * 2**attempt``, capped at the maximum."""
        ceiling = min(self.max_sleep_ms, self.base_sleep_ms * 2 ** min(attempt, 64))
        return (rand or random).uniform(0, ceiling) / 1000

    async def call(self, operation: Callable[[], Awaitable[T]], *, what: str) -> T:
        """``await operation()``, again after each :class:`BackendUnavailable` while retries
        are allowed; the last error is raised once they are spent."""
        attempt = 0
        while True:
            try:
                result = await operation()
            except BackendUnavailable as exc:
                if not self.always_retry or attempt >= self.max_retries:
                    raise
                log.warning("result_backend_retry", action=what, attempt=attempt + 1,
                            error=str(exc))  # fmt: skip
                await asyncio.sleep(self.delay(attempt))
                attempt += 1
                continue
            if attempt:
                log.info("result_backend_back", action=what, attempts=attempt + 1)
            return result


#: Celery's default: one attempt.
NO_RETRY = StoreRetry(always_retry=False)
