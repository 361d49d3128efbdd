"""The quick benchmark's harness works (at tiny N; nothing here is about speed)."""

from __future__ import annotations

import sys

import pytest

from benchmarks import quick_noop

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("broker", ["amqp_url", "redis_url"])
def test_drain_measures_a_celeriac_worker(
    broker: str, unique_name: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(broker)
    command = [
        sys.executable, "-m", "runtime.cli", "worker", "-A", "examples.tasks:app",
        "--broker", url, "--loglevel", "warning", "-c", "2", "-Q", unique_name,
    ]  # fmt: skip

    rate = quick_noop.drain(command, unique_name, 50, url)

    assert rate > 0
