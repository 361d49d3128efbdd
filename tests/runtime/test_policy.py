"""Per-queue time limits, as an operator configures them."""

from __future__ import annotations

import pytest

from runtime.policy import DEFAULT_POLICY, QueuePolicy, TimeLimits


@pytest.mark.parametrize(
    ("queue", "soft", "hard"),
    [
        ("standard", 840, 900),
        ("timed_5min", 270, 300),
        ("timed_30min", 1740, 1800),
        ("timed_1hour", 3540, 3600),
        ("timed_4hour", 4 * 3600 - 60, 4 * 3600),
        ("timed_8hour", 8 * 3600 - 60, 8 * 3600),
        ("timed_24hour", 24 * 3600 - 60, 24 * 3600),
        ("infinite", None, None),
        ("cron", None, None),
        ("some_other_queue", None, None),
    ],
)
def test_defaults(queue: str, soft: float | None, hard: float | None) -> None:
    assert DEFAULT_POLICY.for_queue(queue) == TimeLimits(soft=soft, hard=hard)


def test_effective_limit_is_the_smaller_of_message_and_queue() -> None:
    policy = DEFAULT_POLICY

    assert policy.effective("timed_5min", TimeLimits(soft=10, hard=20)) == TimeLimits(10, 20)
    assert policy.effective("timed_5min", TimeLimits(hard=3600)) == TimeLimits(270, 300)
    assert policy.effective("timed_5min", TimeLimits(soft=280)) == TimeLimits(270, 300)
    assert policy.effective("infinite", TimeLimits(soft=5)) == TimeLimits(soft=5)
    assert policy.effective("infinite", TimeLimits()) == TimeLimits()


def test_environment_override() -> None:
    policy = DEFAULT_POLICY.with_env(" standard=600, timed_5min=250/300 ,reports=NONE,fast=2.5")

    assert policy.for_queue("standard") == TimeLimits(soft=540, hard=600)
    assert policy.for_queue("timed_5min") == TimeLimits(soft=250, hard=300)
    assert policy.for_queue("reports") == TimeLimits()
    assert policy.for_queue("fast") == TimeLimits(soft=2.25, hard=2.5)
    assert policy.for_queue("timed_1hour") == DEFAULT_POLICY.for_queue("timed_1hour")
    assert DEFAULT_POLICY.with_env("") is DEFAULT_POLICY
    assert DEFAULT_POLICY.with_env(None) is DEFAULT_POLICY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("standard", "not 'queue=seconds'"),
        ("=5", "not 'queue=seconds'"),
        ("standard=soon", "is not seconds"),
        ("standard=10/5", "after hard limit"),
        ("standard=0", "positive"),
        ("standard=nan", "positive"),
        ("standard=inf", "positive"),
    ],
)
def test_bad_environment_values_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DEFAULT_POLICY.with_env(value)


def test_toml_override() -> None:
    policy = QueuePolicy().with_toml(
        """
        [queues.standard]
        hard = 120
        [queues.reports]
        soft = 3000
        hard = 3600
        [queues.soft_only]
        soft = 10
        [queues.unlimited]
        """
    )

    assert policy.for_queue("standard") == TimeLimits(soft=108, hard=120)
    assert policy.for_queue("reports") == TimeLimits(soft=3000, hard=3600)
    assert policy.for_queue("soft_only") == TimeLimits(soft=10)
    assert policy.for_queue("unlimited") == TimeLimits()


def test_toml_puts_a_queue_in_the_process_pool_keeping_its_limits() -> None:
    policy = QueuePolicy().with_toml(
        """
        [queues.standard]
        pool = "process"
        [queues.reports]
        pool = "process"
        hard = 60
        [queues.cron]
        pool = "thread"
        """
    )

    assert policy.isolates("standard")
    assert policy.isolates("reports")
    assert not policy.isolates("cron")
    assert not policy.isolates("timed_5min")
    assert policy.for_queue("standard") == TimeLimits(soft=840, hard=900)
    assert policy.for_queue("reports") == TimeLimits(soft=54, hard=60)
    assert policy.with_env("standard=120").isolates("standard")
    assert not policy.with_toml("[queues.standard]\npool = 'thread'").isolates("standard")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[queues", "not valid TOML"),
        ("[queues.standard]\nhard = 'long'", "numbers of seconds"),
        ("[queues.standard]\nhard = true", "numbers of seconds"),
        ("[queues.standard]\nlimit = 5", "only 'soft' and 'hard'"),
        ("[queues.standard]\npool = 'prefork'", "pool is 'thread' or 'process'"),
        ("[queues]\nstandard = 5", "only 'soft' and 'hard'"),
        ("[queues.standard]\nsoft = 10\nhard = 5", "after hard limit"),
    ],
)
def test_bad_toml_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueuePolicy().with_toml(text)


def test_a_task_limit_below_the_queue_soft_cap_drops_the_soft_limit() -> None:
    """A 60 s hard limit on `standard` (soft cap 840 s): the soft cap could never fire."""
    assert DEFAULT_POLICY.effective("standard", TimeLimits(hard=60)) == TimeLimits(hard=60)


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        (30, 20, TimeLimits(hard=20)),  # Celery clients may send soft > hard
        (0, 10, TimeLimits(hard=10)),
        (-1, -1, TimeLimits()),
        (5, None, TimeLimits(soft=5)),
    ],
)
def test_lenient_limits_from_messages(
    soft: float | None, hard: float | None, expected: TimeLimits
) -> None:
    assert TimeLimits.lenient(soft, hard) == expected
