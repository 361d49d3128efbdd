"""The celeriac side of the benchmarks: the suite's three tasks, run by ``celeriac worker``.

The same names exist for Celery (``benchmarks/celery_app.py``) and aio-celery
(``benchmarks/aio_celery_app.py``), so every system runs the same messages. The broker comes
from the worker's ``--broker``; results go to ``BENCH_RESULT_BACKEND`` when it is set.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from runtime import App

from .tally import Tally

if TYPE_CHECKING:
    import redis.asyncio

app = App("bench", result_backend=os.environ.get("BENCH_RESULT_BACKEND") or None)
_stamps: redis.asyncio.Redis | None = None


@app.task(name="noop")
async def noop() -> None:
    """Does nothing: the unit of work of the drain scenarios."""


def _redis() -> redis.asyncio.Redis:
    global _stamps  # noqa: PLW0603 - one client per worker process
    if _stamps is None:
        import redis.asyncio  # noqa: PLC0415 - a worker that never stamps never loads redis-py

        # Thousands of tasks share it: wait for one of 50 connections rather than fail.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), max_connections=50
        )
        _stamps = redis.asyncio.Redis.from_pool(pool)
    return _stamps


_done = Tally(_redis)


@app.task(name="bench.sleep")
async def sleep(seconds: float, key: str | None = None) -> None:
    """Waits ``seconds`` without using the CPU, then counts itself done in Redis ``key``
    (when given; :mod:`benchmarks.tally` writes the count): the unit of the I/O scenario."""
    await asyncio.sleep(seconds)
    if key is not None:
        _done.add(key)


@app.task(name="bench.stamp")
async def stamp(sent: float, key: str) -> None:
    """Records ``"<sent>,<started>"`` in Redis list ``key``: publish-to-start latency."""
    started = time.time()
    await _redis().rpush(key, f"{sent},{started}")
