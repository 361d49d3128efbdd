"""The Celery side of the benchmarks: the same task names, run by Celery's own worker.

Celery's prefork and threads pools run plain functions, so ``bench.sleep`` blocks its pool slot
with ``time.sleep`` and ``bench.stamp`` uses a synchronous Redis client (one per process).
"""

from __future__ import annotations

import functools
import os
import time

import redis
from celery import Celery

#: Where ``bench.stamp`` records its stamps.
STAMP_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery(
    "bench",
    broker=os.environ.get("CELERIAC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
)
# No remote control: two workers of one host would share the pidbox queue of their node name.
app.conf.update(worker_hijack_root_logger=False, worker_enable_remote_control=False)
if backend := os.environ.get("BENCH_RESULT_BACKEND"):
    app.conf.update(result_backend=backend)
else:
    app.conf.update(task_ignore_result=True)


@functools.cache
def _stamp_client(pid: int) -> redis.Redis:
    """This process's Redis client for ``bench.stamp`` (keyed by pid: prefork children fork)."""
    # A threads pool shares it: wait for one of 50 connections rather than fail.
    pool = redis.BlockingConnectionPool.from_url(STAMP_REDIS_URL, max_connections=50)
    return redis.Redis(connection_pool=pool)


@app.task(name="noop")
def noop() -> None:
    """Does nothing."""


@app.task(name="bench.sleep")
def sleep(seconds: float, key: str | None = None) -> None:
    """Blocks its pool slot for ``seconds``, then counts itself done in Redis ``key`` when
    given."""
    time.sleep(seconds)
    if key is not None:
        _stamp_client(os.getpid()).incr(key)


@app.task(name="bench.stamp")
def stamp(sent: float, key: str) -> None:
    """Appends ``"<sent>,<now>"`` to the Redis list ``key``: publish-to-start latency."""
    _stamp_client(os.getpid()).rpush(key, f"{sent},{time.time()}")
