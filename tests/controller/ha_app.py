"""A celeriac app for the controller's end-to-end tests: an every-second schedule of a task
that counts its runs by task id in Redis. ``HA_BROKER``, ``HA_QUEUE``, ``HA_COUNTS`` (a Redis
hash) and ``HA_REDIS`` (where it is, when the broker is not Redis) come from the environment,
so each test has its own."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio

from runtime import App

app = App(
    "ha",
    broker=os.environ.get("HA_BROKER", "memory://"),
    beat_schedule={
        "every-second": {
            "task": "ha.tick",
            "schedule": 1.0,
            "options": {"queue": os.environ.get("HA_QUEUE", "celery")},
        }
    },
)
_client: list[redis.asyncio.Redis] = []


@app.task(name="ha.tick", bind=True)
async def tick(self: Any) -> None:
    """Count this run under its task id."""
    await _count(os.environ["HA_COUNTS"], self.request.id)


async def _count(key: str, task_id: str) -> None:
    if not _client:
        redis_url = os.environ.get("HA_REDIS") or os.environ["HA_BROKER"]
        _client.append(redis.asyncio.Redis.from_url(redis_url))
    await _client[0].hincrby(key, task_id, 1)


@app.task(name="ha.slow_late", bind=True, acks_late=True)
async def slow_late(self: Any, seconds: float) -> None:
    """An acks_late task that takes ``seconds``: counts its starts and its completions."""
    await _count(os.environ["HA_COUNTS"] + ":starts", self.request.id)
    await asyncio.sleep(seconds)
    await _count(os.environ["HA_COUNTS"], self.request.id)


@app.task(name="ha.slow_early", bind=True)
async def slow_early(self: Any, seconds: float) -> None:
    """The same, acknowledged when it starts (Celery's default)."""
    await _count(os.environ["HA_COUNTS"] + ":starts", self.request.id)
    await asyncio.sleep(seconds)
    await _count(os.environ["HA_COUNTS"], self.request.id)
