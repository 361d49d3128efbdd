"""The aio-celery side of the benchmarks: the same task names, run by aio-celery's worker.

    python -m aio_celery worker -Q QUEUE --concurrency 100 benchmarks.aio_celery_app:app

aio-celery speaks only AMQP (aio-pika) and keeps results, when enabled, in Redis. Its QoS is
``worker_prefetch_multiplier * concurrency`` (default multiplier 4); 1 here makes the QoS equal to
the concurrency, as the suite sets every other worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import redis.asyncio
from aio_celery import Celery

from .tally import Tally

#: Where ``bench.stamp`` records its stamps (also the default of the suite's Redis).
STAMP_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench")
app.conf.update(
    broker_url=os.environ.get("CELERIAC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    worker_prefetch_multiplier=1,
)
if backend := os.environ.get("BENCH_RESULT_BACKEND"):
    app.conf.update(result_backend=backend)
else:
    app.conf.update(task_ignore_result=True)


@contextlib.asynccontextmanager
async def _stamp_client() -> AsyncIterator[redis.asyncio.Redis]:
    """The worker's one Redis client for ``bench.stamp``, open while the worker runs."""
    # Thousands of tasks share it: wait for one of 50 connections rather than fail.
    pool = redis.asyncio.BlockingConnectionPool.from_url(STAMP_REDIS_URL, max_connections=50)
    async with redis.asyncio.Redis.from_pool(pool) as client:
        yield client


app.define_app_context(_stamp_client)
_done = Tally(lambda: app.context)


@app.task(name="noop")
async def noop() -> None:
    """Does nothing."""


@app.task(name="bench.sleep")
async def sleep(seconds: float, key: str | None = None) -> None:
    """Waits ``seconds`` without blocking the loop (an I/O-bound task), then counts itself
    done in Redis ``key`` when given (:mod:`benchmarks.tally` writes the count)."""
    await asyncio.sleep(seconds)
    if key is not None:
        _done.add(key)


@app.task(name="bench.stamp")
async def stamp(sent: float, key: str) -> None:
    """Appends ``"<sent>,<now>"`` to the Redis list ``key``: publish-to-start latency."""
    await app.context.rpush(key, f"{sent},{time.time()}")
