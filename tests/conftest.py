"""Shared fixtures: real brokers for integration tests.

Each broker URL comes from the environment, else the local default if it
answers, else a Docker container (see tests/brokers.py). With none of those
the test is skipped, except under CI (``CI=true``), where a missing broker is
a failure: CI must never go green by skipping everything.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import aio_pika
import kombu.pools
import pytest
import redis.asyncio

from tests import brokers, sqs_server


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak``: run tests/chaos/ at full size (minutes) rather than CI's."""
    parser.addoption(
        "--soak", action="store_true", help="run the chaos suite at soak size (tests/chaos/)"
    )


@pytest.fixture(autouse=True)
def _fresh_kombu_pools() -> Iterator[None]:
    """Each test leaves kombu's process-wide connection pools empty.

    kombu shares one pool among every Celery app on the same broker URL, and an app's
    ``close()`` (``with Celery(...)``) closes that shared pool: a later test's client then
    drew from a closed or drained pool and hung in ``send_task``. Dropping the pools after
    each test gives the next test's apps pools of their own.
    """
    yield
    kombu.pools.reset()


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
    (see ``unique_name``); never flush the server. Keys named after a ``unique_name``
    (``t-<session>-<hex>...``) are deleted at the end of the session."""
    for url in _broker_url(brokers.REDIS):
        yield url
        asyncio.run(_delete_redis_names(url))


async def _delete_redis_names(url: str) -> None:
    async with redis.asyncio.Redis.from_url(url) as client:
        pattern = f"t-{_SESSION}-*"  # this session's only: others may be running beside it
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])


#: Every name ``unique_name`` handed out this session, for the clean-up in ``amqp_url``.
_NAMES: list[str] = []
#: In every ``unique_name`` of this session, so that its clean-up spares concurrent sessions.
_SESSION = uuid.uuid4().hex[:6]


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """URL of a RabbitMQ broker (guest/guest, vhost ``/``) shared by the whole
    session. Isolate tests by queue/exchange name (see ``unique_name``).

    At the end of the session the queues (``<name>``, ``<name>.dead``) and
    exchanges named after every ``unique_name`` are deleted: durable test
    queues left on a long-lived broker slow its every restart.
    """
    for url in _broker_url(brokers.RABBITMQ):
        yield url
        asyncio.run(_delete_amqp_names(url, _NAMES))


async def _delete_amqp_names(url: str, names: list[str]) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for name in names:
            for queue in (name, f"{name}.dead"):
                await channel.queue_delete(queue)  # deleting a missing queue is fine
            await channel.exchange_delete(name)


@pytest.fixture
def unique_name() -> str:
    """A short name unique to this test, for queues, exchanges and keys."""
    name = f"t-{_SESSION}-{uuid.uuid4().hex[:8]}"
    _NAMES.append(name)
    return name


@pytest.fixture(scope="session")
def sqs_url() -> Iterator[str]:
    """A celeriac ``sqs://`` URL (credentials, region and endpoint included) for a moto
    server started for the session. Isolate tests by queue name (see ``unique_name``)."""
    if not sqs_server.moto_available():
        message = "no SQS server: moto[server] is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sqs_server.moto_server() as endpoint:
        yield sqs_server.sqs_url_for(endpoint)
