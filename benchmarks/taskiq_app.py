"""The taskiq side of the benchmarks: the suite's three tasks, run by taskiq's own worker.

    BENCH_TASKIQ_QUEUE=q CELERIAC_BROKER_URL=amqp://... \\
        python -m taskiq worker benchmarks.taskiq_app:broker --workers 1 --max-async-tasks 100

taskiq has its own message format (:mod:`benchmarks.taskiq_queues` writes it), so its rows
run the same task names and arguments as every other system, in taskiq's messages. The broker
is the one taskiq's documentation starts with on each server:

* RabbitMQ: ``taskiq-aio-pika``'s ``AioPikaBroker``, its QoS the row's concurrency (as every
  other row's), acknowledging once a task is done. Its queue is declared classic (taskiq's
  default is a quorum queue; Celery's, celeriac's and the floor's are classic).
* Redis: ``taskiq-redis``'s ``ListQueueBroker``, one ``BRPOP`` at a time and no
  acknowledgement at all: a task popped by a worker that dies is lost. That is less work per
  message than kombu's bookkeeping, which celeriac keeps so that nothing is lost. Its client
  reads without a socket timeout (see :func:`make_broker`).

Results go to ``RedisAsyncResultBackend`` (key: the task id) when ``BENCH_RESULT_BACKEND``
is set.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskiq import AsyncBroker
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.queue import Queue, QueueType
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from .tally import Tally, shared_client

__all__ = ["broker", "make_broker"]


def make_broker(url: str, queue: str, *, qos: int = 100, results: str | None = None) -> AsyncBroker:
    """A taskiq broker for ``queue`` on ``url`` (RabbitMQ or Redis), its results in Redis
    ``results`` if given: the worker's, and the harness's for declaring and sending."""
    found: AsyncBroker
    if url.startswith(("redis://", "rediss://")):
        # Its BRPOP blocks with no timeout, and redis-py 8 reads with a 5 s one by default: the
        # worker process died whenever the queue stayed empty that long, losing the tasks it
        # ran (taskiq-python/taskiq-redis#127, open). Read without one, as redis-py 7 did.
        found = ListQueueBroker(url, queue_name=queue, socket_timeout=None)
    else:
        found = AioPikaBroker(
            url, qos=qos, task_queues=[Queue(name=queue, type=QueueType.CLASSIC)],
            dead_letter_queue=Queue(name=f"{queue}.dead", type=QueueType.CLASSIC),
        )  # fmt: skip
    if results:
        found = found.with_result_backend(RedisAsyncResultBackend(results))
    return found


broker = make_broker(
    os.environ.get("CELERIAC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_TASKIQ_QUEUE", "taskiq"),
    qos=int(os.environ.get("BENCH_TASKIQ_QOS", "100")),
    results=os.environ.get("BENCH_RESULT_BACKEND") or None,
)
_done = Tally(shared_client)


@broker.task(task_name="noop")
async def noop() -> None:
    """Does nothing."""


@broker.task(task_name="bench.sleep")
async def sleep(seconds: float, key: str | None = None) -> None:
    """Waits ``seconds`` without blocking the loop, then counts itself done in Redis ``key``
    when given (:mod:`benchmarks.tally` writes the count)."""
    await asyncio.sleep(seconds)
    if key is not None:
        _done.add(key)


@broker.task(task_name="bench.stamp")
async def stamp(sent: float, key: str) -> None:
    """Appends ``"<sent>,<started>"`` to the Redis list ``key``: publish-to-start latency."""
    started = time.time()
    await shared_client().rpush(key, f"{sent},{started}")
