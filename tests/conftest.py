"""Shared fixtures: real brokers for integration tests.

Each broker URL comes from the environment, else the local default if it
answers, else a Docker container (see tests/brokers.py). With none of those
the test is skipped, except under CI (``CI=true``), where a missing broker is
a failure: CI must never go green by skipping everything.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests import brokers


def _unavailable(broker: brokers.Broker) -> None:
    """Skip (locally) or fail (in CI) for lack of ``broker``."""
    message = (
        f"no {broker.name} broker: set {broker.env_vars[0]}, run .ci/brokers, "
        f"or make a Docker engine available"
    )
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _broker_url(broker: brokers.Broker) -> Iterator[str]:
    """Yield a URL for ``broker``, starting (and later stopping) a container if needed."""
    if (url := brokers.configured_or_local_url(broker)) is not None:
        yield url
    elif brokers.docker_available():
        with brokers.container_url(broker) as url:
            yield url
    else:
        _unavailable(broker)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server shared by the whole session. Isolate data by key
    (see ``unique_name``); never flush the server."""
    yield from _broker_url(brokers.REDIS)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """URL of a RabbitMQ broker (guest/guest, vhost ``/``) shared by the whole
    session. Isolate tests by queue/exchange name (see ``unique_name``)."""
    yield from _broker_url(brokers.RABBITMQ)


@pytest.fixture
def unique_name() -> str:
    """A short name unique to this test, for queues, exchanges and keys."""
    return f"t-{uuid.uuid4().hex[:12]}"
