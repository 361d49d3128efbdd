"""The app the chaos tests run with ``celeriac worker -A tests.chaos.app:app``.

Each task notes that it started (``<key>:started``, a set) and, when it has finished, counts its
run (``<key>:runs``, a hash of task id to runs), both on the result backend's Redis. A task
killed between the two is one that was running when its worker died.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import redis.asyncio

from runtime import App, Task

app = App("chaos")

_client: redis.asyncio.Redis | None = None


def _redis() -> redis.asyncio.Redis:
    """One client per worker process, on the result backend's Redis."""
    global _client  # noqa: PLW0603 - one client per worker process
    if _client is None:
        _client = redis.asyncio.Redis.from_url(os.environ["INTEROP_REDIS_URL"])
    return _client


async def _run(task_id: str, key: str) -> str:
    client = _redis()
    await client.sadd(f"{key}:started", task_id)
    await asyncio.sleep(random.uniform(0, 0.02))
    await client.hincrby(f"{key}:runs", task_id, 1)
    return task_id


@app.task(name="chaos.late", acks_late=True, bind=True)
async def late(self: Any, key: str) -> str:
    """Acknowledged after it ran: a worker killed mid-run leaves it to be delivered again."""
    return await _run(self.request.id, key)


@app.task(name="chaos.early", bind=True)
async def early(self: Any, key: str) -> str:
    """Acknowledged as it starts (Celery's default): a worker killed mid-run loses it."""
    return await _run(self.request.id, key)


@app.task(name="chaos.long", acks_late=True, bind=True)
async def long(self: Task[Any, Any], key: str, seconds: float) -> str:
    """An ``acks_late`` task that outlasts the broker's ``consumer_timeout``; counts its runs."""
    await _redis().hincrby(f"{key}:runs", self.request.id, 1)
    await asyncio.sleep(seconds)
    return self.request.id
