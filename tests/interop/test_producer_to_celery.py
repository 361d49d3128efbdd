"""celeriac's producer feeding Celery's own worker: countdown, expires and priority as a stock
``celery worker`` reads them (prefork, prefetch multiplier 1)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from runtime import App

from .conftest import Broker

StartCelery = Callable[..., subprocess.Popen[str]]


def _send(app: App, *sends: tuple[str, tuple[Any, ...], dict[str, Any]]) -> list[str]:
    """Send with celeriac's producer; the task ids."""

    async def send_all() -> list[str]:
        try:
            return [(await app.send_task(name, args, **options)).id
                    for name, args, options in sends]  # fmt: skip
        finally:
            await app.aclose()

    return asyncio.run(send_all())


def _producer(broker: Broker, redis_url: str, **options: Any) -> App:
    return App("producer", broker=broker.url, result_backend=redis_url, **options)


def test_a_countdown_and_an_expiry_from_celeriac_are_honoured_by_celery(
    start_celery_worker: StartCelery, celery_client: Celery, broker: Broker, unique_name: str,
    redis_url: str,
) -> None:  # fmt: skip
    prefix = broker.client_options.get("global_keyprefix", "")
    start_celery_worker(unique_name, broker_url=broker.client_url, keyprefix=prefix)
    due = time.time() + 2
    later, expired = _send(
        _producer(broker, redis_url),
        ("interop.started_at", (), {"queue": unique_name, "countdown": 2}),
        ("interop.started_at", (), {"queue": unique_name, "countdown": 1.5, "expires": 0.5}),
    )

    assert due <= AsyncResult(later, app=celery_client).get(timeout=20) <= due + 1.5
    revoked = AsyncResult(expired, app=celery_client)
    deadline = time.monotonic() + 15
    while revoked.state != "REVOKED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert revoked.state == "REVOKED"


def test_a_high_priority_task_from_celeriac_overtakes_queued_ones_on_celery(
    start_celery_worker: StartCelery, celery_client: Celery, broker: Broker, unique_name: str,
    redis_url: str,
) -> None:  # fmt: skip
    """On RabbitMQ 9 is the highest priority, on Redis 0. Celery's worker prefetches one more
    message than it runs with early acks, so the urgent one may follow one low one."""
    low, high = (0, 9) if broker.kind == "amqp" else (9, 0)
    prefix = broker.client_options.get("global_keyprefix", "")
    start_celery_worker(unique_name, broker_url=broker.client_url, keyprefix=prefix,
                        concurrency=1, max_priority=10)  # fmt: skip
    producer = _producer(broker, redis_url, task_queue_max_priority=10)
    options = {"queue": unique_name}
    [busy] = _send(producer, ("interop.slow", (1.5,), options))
    time.sleep(0.5)  # the one process is busy: what follows queues in the broker
    *queued, urgent = _send(
        producer,
        *[("interop.started_at", (), {**options, "priority": low})] * 20,
        ("interop.started_at", (), {**options, "priority": high}),
    )

    first = AsyncResult(urgent, app=celery_client).get(timeout=20)
    starts = [AsyncResult(task_id, app=celery_client).get(timeout=20) for task_id in queued]

    assert AsyncResult(busy, app=celery_client).get(timeout=20) == "slept"
    assert sum(start < first for start in starts) <= 1, sorted(starts)[:3]
