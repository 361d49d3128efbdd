"""Fixtures of the controller's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runtime import App


@pytest.fixture(params=["amqp", "redis", "sqs"])
async def app(
    request: pytest.FixtureRequest, redis_url: str, unique_name: str
) -> AsyncIterator[App]:
    """A producer on each broker in turn, recording runs in Redis under this test's prefix."""
    broker = redis_url
    if request.param != "redis":
        broker = str(request.getfixturevalue(f"{request.param}_url"))
    producer = App("controller-test", broker=broker, run_registry=redis_url,
                   run_registry_prefix=f"{unique_name}:")  # fmt: skip
    yield producer
    await producer.aclose()
