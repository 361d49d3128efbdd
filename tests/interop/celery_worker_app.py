"""The Celery side of the mixed-fleet tests: a stock Celery worker runs ``interop.count``.

Broker, result backend and Redis key prefix come from ``INTEROP_BROKER_URL``,
``INTEROP_REDIS_URL`` and ``INTEROP_KEYPREFIX`` (none by default).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

app = Celery(
    "interop-celery",
    broker=os.environ.get("INTEROP_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(worker_hijack_root_logger=False, worker_prefetch_multiplier=1)
if os.environ.get("INTEROP_KEYPREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["INTEROP_KEYPREFIX"]}
_counter = redis.Redis.from_url(os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="interop.count", bind=True)
def count(self: Any, key: str) -> str:
    """Count this run of this task id in hash ``key``; say who ran it."""
    _counter.hincrby(key, self.request.id, 1)
    return "celery"
