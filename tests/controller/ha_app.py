"""A celeriac app for the controller's end-to-end tests: an every-second schedule of a task
that counts its runs by task id in Redis. ``HA_BROKER``, ``HA_QUEUE`` and ``HA_COUNTS`` (a
Redis hash) come from the environment, so each test has its own."""

from __future__ import annotations

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
    if not _client:
        _client.append(redis.asyncio.Redis.from_url(os.environ["HA_BROKER"]))
    await _client[0].hincrby(os.environ["HA_COUNTS"], self.request.id, 1)
