"""The Celery side of the interop tests: a stock Celery worker runs these tasks.

Broker, result backend, Redis key prefix and the queues' max priority come from
``INTEROP_BROKER_URL``, ``INTEROP_REDIS_URL``, ``INTEROP_KEYPREFIX`` (none by default) and
``INTEROP_MAX_PRIORITY`` (none by default).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

app = Celery(
    "interop-celery",
    broker=os.environ.get("INTEROP_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(worker_hijack_root_logger=False, worker_prefetch_multiplier=1)
if os.environ.get("INTEROP_MAX_PRIORITY"):
    app.conf.task_queue_max_priority = int(os.environ["INTEROP_MAX_PRIORITY"])
if os.environ.get("INTEROP_KEYPREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["INTEROP_KEYPREFIX"]}
_counter = redis.Redis.from_url(os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="interop.count", bind=True)
def count(self: Any, key: str) -> str:
    """Count this run of this task id in hash ``key``; say who ran it."""
    _counter.hincrby(key, self.request.id, 1)
    return "celery"


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.tsum")
def tsum(numbers: list[int]) -> int:
    """A chord body: the sum of the header's results."""
    return sum(numbers)


@app.task(name="interop.decline")
def decline(reason: str) -> None:
    raise ValueError(reason)


@app.task(name="interop.mark")
def mark(task_id: str, key: str) -> str:
    """An old-style errback: note the failed task's id at ``key``."""
    _counter.set(key, task_id)
    return task_id


@app.task(name="interop.started_at")
def started_at() -> float:
    """When this run started (unix seconds)."""
    return time.time()


@app.task(name="interop.slow")
def slow(seconds: float) -> str:
    """Sleeps ``seconds``: keeps the worker's one process busy."""
    time.sleep(seconds)
    return "slept"
