"""The lease rules of ``runtime/worker/leases.py`` against a real Redis (and a RabbitMQ
transport for their copies); the whole story, with RabbitMQ's consumer_timeout, is
``tests/chaos/test_consumer_timeout.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
import structlog

from protocol import WireMessage
from runtime.transports.amqp.transport import AmqpTransport
from runtime.transports.base import Delivery
from runtime.worker.leases import LEASE_HEADER, Leases
from runtime.worker.slots import Handling, Slots


@pytest.fixture
async def leases(amqp_url: str, redis_url: str, unique_name: str) -> AsyncIterator[Leases]:
    client = redis.asyncio.Redis.from_url(redis_url)
    # A minute's timeout: no renewal comes due within a test, so no copy is published.
    yield Leases(
        AmqpTransport(amqp_url),
        client,
        timeout=60,
        prefix=f"{unique_name}:lease:",
        log=structlog.get_logger("test"),
    )
    await client.aclose()


def _delivery(lease: str | None = None) -> Delivery:
    headers: dict[str, Any] = {"id": "task-1", "task": "t"}
    if lease is not None:
        headers[LEASE_HEADER] = lease
    message = WireMessage(b"[[], {}, {}]", "application/json", "utf-8", headers)
    return Delivery(message, "q", "", "q", redelivered=False, handle=None)


async def test_a_copy_runs_only_with_the_current_lease(leases: Leases) -> None:
    await leases.client.set(f"{leases.prefix}task-1", "lease-2")

    assert await leases.admit("task-1", _delivery())  # not a copy: an ordinary message
    assert await leases.admit("task-1", _delivery("lease-2"))
    # Admitting leaves the lease: the same copy, requeued after its worker died, runs again.
    assert await leases.admit("task-1", _delivery("lease-2"))
    assert not await leases.admit("task-1", _delivery("lease-1"))  # superseded
    await leases.client.delete(f"{leases.prefix}task-1")
    assert not await leases.admit("task-1", _delivery("lease-2"))  # the run ended


async def test_a_run_that_ends_releases_its_lease(leases: Leases) -> None:
    key = f"{leases.prefix}task-1"
    await leases.client.set(key, "lease-2")
    handling = Handling(_delivery("lease-2"), Slots(1), held=False)
    tasks_before = len(asyncio.all_tasks())

    async with leases.hold("task-1", handling):
        assert len(asyncio.all_tasks()) == tasks_before  # a timer until a renewal is due

    assert await leases.client.get(key) is None


async def test_a_cancelled_run_keeps_its_lease_for_its_copy(leases: Leases) -> None:
    key = f"{leases.prefix}task-1"
    await leases.client.set(key, "lease-2")
    handling = Handling(_delivery("lease-2"), Slots(1), held=False)

    async def run() -> None:
        async with leases.hold("task-1", handling):
            await asyncio.sleep(10)

    running = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert await leases.client.get(key) == b"lease-2"
    await leases.client.delete(key)


async def test_a_later_holder_keeps_its_lease_when_an_earlier_run_ends(leases: Leases) -> None:
    key = f"{leases.prefix}task-1"
    await leases.client.set(key, "lease-3")  # written since by the run's newer holder
    handling = Handling(_delivery("lease-2"), Slots(1), held=False)

    async with leases.hold("task-1", handling):
        pass

    assert await leases.client.get(key) == b"lease-3"
    await leases.client.delete(key)
