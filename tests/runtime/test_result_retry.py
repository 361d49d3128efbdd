"""Result writes retried while the backend is away (Celery's ``result_backend_always_retry``)."""

from __future__ import annotations

import math
import random

import pytest
import redis.exceptions

from runtime import App
from runtime.errors import BackendError, BackendUnavailable, translate_redis_errors
from runtime.results.retrying import NO_RETRY, StoreRetry


def _raises(exc: Exception) -> None:
    with translate_redis_errors("store a result"):
        raise exc


@pytest.mark.parametrize(
    "exc",
    [redis.exceptions.ConnectionError("refused"), redis.exceptions.TimeoutError("slow"),
     redis.exceptions.BusyLoadingError("LOADING")],
)  # fmt: skip
def test_a_backend_that_does_not_answer_is_unavailable(exc: Exception) -> None:
    with pytest.raises(BackendUnavailable, match="result backend: cannot store a result"):
        _raises(exc)


def test_a_refusal_is_a_plain_backend_error() -> None:
    with pytest.raises(BackendError) as caught:
        _raises(redis.exceptions.ResponseError("NOSCRIPT"))
    assert not isinstance(caught.value, BackendUnavailable)


class Flaky:
    """An operation that fails ``failures`` times with ``error``, then returns ``"ok"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_retries_until_the_backend_answers() -> None:
    flaky = Flaky(5, BackendUnavailable("result backend: cannot store: refused"))
    retry = StoreRetry(base_sleep_ms=1, max_sleep_ms=2)
    assert await retry.call(flaky, what="store") == "ok"
    assert flaky.calls == 6


async def test_stops_after_max_retries() -> None:
    flaky = Flaky(5, BackendUnavailable("refused"))
    with pytest.raises(BackendUnavailable):
        await StoreRetry(max_retries=2, base_sleep_ms=1).call(flaky, what="store")
    assert flaky.calls == 3


async def test_celerys_default_and_refusals_are_not_retried() -> None:
    once = Flaky(1, BackendUnavailable("refused"))
    with pytest.raises(BackendUnavailable):
        await NO_RETRY.call(once, what="store")
    refused = Flaky(1, BackendError("NOSCRIPT"))
    with pytest.raises(BackendError):
        await StoreRetry(base_sleep_ms=1).call(refused, what="store")
    assert (once.calls, refused.calls) == (1, 1)


def test_delays_grow_with_full_jitter_up_to_the_cap() -> None:
    retry = StoreRetry(base_sleep_ms=10, max_sleep_ms=10_000)
    rand = random.Random(7)
    ceilings = [max(retry.delay(n, rand) for _ in range(200)) for n in (0, 3, 20)]
    assert 0.009 < ceilings[0] <= 0.010
    assert 0.07 < ceilings[1] <= 0.080
    assert 9.5 < ceilings[2] <= 10.0
    assert retry.delay(10_000, rand) <= 10.0  # no overflow on a long outage


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        StoreRetry(max_retries=-1)


def test_the_app_takes_celerys_setting_names() -> None:
    app = App(
        result_backend="redis://127.0.0.1:1/0",
        result_backend_always_retry=False,
        result_backend_max_retries=3,
        result_backend_base_sleep_between_retries_ms=5,
        result_backend_max_sleep_between_retries_ms=50,
    )
    assert app.result_retry == StoreRetry(False, 3, 5, 50)
    assert app.backend is not None
    assert app.backend.retry == app.result_retry
    assert App().result_retry == StoreRetry(True, math.inf, 10, 10_000)
