"""The Celery side of the remote-control tests: a stock Celery worker that runs
``interop.count`` on the test's broker, Redis key prefix included.

Broker, result backend and key prefix come from ``INTEROP_BROKER_URL``,
``INTEROP_REDIS_URL`` and ``INTEROP_KEYPREFIX`` (empty on RabbitMQ).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

app = Celery(
    "interop-celery-control",
    broker=os.environ["INTEROP_BROKER_URL"],
    backend=os.environ["INTEROP_REDIS_URL"],
)
app.conf.update(worker_hijack_root_logger=False, worker_prefetch_multiplier=1)
if os.environ.get("INTEROP_KEYPREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["INTEROP_KEYPREFIX"]}
_counter = redis.Redis.from_url(os.environ["INTEROP_REDIS_URL"])


@app.task(name="interop.count", bind=True)
def count(self: Any, key: str) -> str:
    """Count this run of this task id in hash ``key``; say who ran it."""
    _counter.hincrby(key, self.request.id, 1)
    return "celery"
