"""Exponential backoff for ``autoretry_for``, against Celery's own arithmetic."""

from __future__ import annotations

import random

import pytest
from celery.utils.time import get_exponential_backoff_interval

from runtime.task import TaskOptions
from runtime.worker.retries import autoretry_countdown, backoff_delay


@pytest.mark.parametrize("factor", [0, 1, 3, 10])
@pytest.mark.parametrize("retries", [0, 1, 2, 5, 12])
@pytest.mark.parametrize("maximum", [0, 7, 600])
def test_without_jitter_the_delay_is_celerys(factor: int, retries: int, maximum: int) -> None:
    expected = get_exponential_backoff_interval(factor, retries, maximum, full_jitter=False)

    assert backoff_delay(factor, retries, maximum, jitter=False) == expected


def test_the_delay_doubles_up_to_the_maximum() -> None:
    delays = [backoff_delay(2, retries, 40, jitter=False) for retries in range(7)]

    assert delays == [2, 4, 8, 16, 32, 40, 40]


def test_full_jitter_picks_a_whole_second_from_zero_to_the_delay() -> None:
    seen = {backoff_delay(1, 3, 600, jitter=True, randrange=random.Random(7).randrange)
            for _ in range(200)}  # fmt: skip
    picks: list[int] = []

    def record(stop: int) -> int:
        picks.append(stop)
        return stop - 1

    assert backoff_delay(1, 3, 600, jitter=True, randrange=record) == 8
    assert picks == [9]  # randrange(8 + 1): 0..8 inclusive, as Celery
    assert seen <= set(range(9))
    assert backoff_delay(0, 3, 600, jitter=True, randrange=record) == 0  # nothing to pick from
    assert picks == [9]


@pytest.mark.parametrize(
    ("backoff", "factor"), [(True, 1), (1, 1), (0.5, 1), (2, 2), (2.9, 2), (5, 5)]
)
def test_retry_backoff_true_is_1_and_a_number_is_a_whole_factor(
    backoff: bool | float, factor: int
) -> None:
    options = TaskOptions(retry_backoff=backoff, retry_backoff_max=1000, retry_jitter=False)

    assert [autoretry_countdown(options, n) for n in range(3)] == [factor, 2 * factor, 4 * factor]


def test_no_backoff_leaves_the_countdown_to_retry() -> None:
    assert autoretry_countdown(TaskOptions(retry_backoff=False), 3) is None


def test_backoff_max_and_jitter_come_from_the_options() -> None:
    options = TaskOptions(retry_backoff=True, retry_backoff_max=5.9, retry_jitter=True)

    assert autoretry_countdown(options, 10, randrange=lambda stop: stop - 1) == 5
