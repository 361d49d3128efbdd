"""Priorities, as a Celery user sets them: a high-priority task overtakes the queued ones.

RabbitMQ: queues declared with ``x-max-priority`` (Celery's ``task_queue_max_priority``) and a
per-message priority, 9 the highest. Redis: kombu's priority lists, where a *lower* number is
served first (0 the highest). With prefetch 1 nothing waits in the worker, so the broker's
order is the order tasks start in.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from .conftest import Broker, WorkerProcess

StartWorker = Callable[..., WorkerProcess]

#: (priority of the twenty queued first, priority of the one sent last) per broker.
ORDER = {"amqp": (0, 9), "redis": (9, 0)}


def test_a_high_priority_task_overtakes_twenty_queued_ones(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    celery_client.conf.task_queue_max_priority = 10  # the client declares the queue alike
    worker = start_worker(unique_name, concurrency=1, env={"INTEROP_MAX_PRIORITY": "10"})
    low, high = ORDER[broker.kind]
    busy = celery_client.send_task("interop.slow", (1.0,), queue=unique_name)
    worker.wait_for("task_started", task_id=busy.id)  # the one slot is taken: the rest queue
    queued = [
        celery_client.send_task("interop.started_at", queue=unique_name, priority=low)
        for _ in range(20)
    ]
    urgent = celery_client.send_task("interop.started_at", queue=unique_name, priority=high)

    first = urgent.get(timeout=15)

    assert busy.get(timeout=15) == "slept"
    assert all(first < result.get(timeout=15) for result in queued)
