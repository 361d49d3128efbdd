"""The app the interop tests run with ``celeriac worker -A tests.interop.app:app``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio

from runtime import App, SoftTimeLimitExceeded

# INTEROP_MAX_PRIORITY declares the worker's queues with x-max-priority (Celery's
# task_queue_max_priority), for the priority tests.
_max_priority = os.environ.get("INTEROP_MAX_PRIORITY")
app = App("interop", task_queue_max_priority=int(_max_priority) if _max_priority else None)


class PaymentDeclined(Exception):
    """A task's own exception type."""


@app.task(name="interop.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.echo")
async def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="interop.size")
def size(blob: str) -> int:
    return len(blob)


@app.task(name="interop.decline")
async def decline(reason: str) -> None:
    raise PaymentDeclined(reason, 402)


@app.task(name="interop.slow", track_started=True)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@app.task(name="interop.sync_slow", acks_late=True)
def sync_slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@app.task(name="interop.cleanup_on_soft_limit")
async def cleanup_on_soft_limit() -> str:
    try:
        await asyncio.sleep(60)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not limited"


@app.task(name="interop.ignores_limits")
async def ignores_limits() -> str:
    try:
        await asyncio.sleep(60)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(60)
    return "not limited"


@app.task(name="interop.whoami", bind=True)
async def whoami(self: Any) -> dict[str, Any]:
    return {"id": self.request.id, "hostname": self.request.hostname}


@app.task(name="interop.unkillable")
async def unkillable() -> None:
    """Swallows every cancellation: only leaving the process ends it."""
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            continue


@app.task(name="interop.holds_the_loop")
async def holds_the_loop(how: str) -> str:
    """Never awaits: spins on the CPU, or sleeps in C, on the event loop."""
    if how == "sleep":
        time.sleep(60)
    else:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pass
    return "let go"


@app.task(name="interop.will_not_let_go")
async def will_not_let_go() -> None:
    """Holds the loop and swallows every exception raised into it."""
    while True:
        try:
            while True:
                pass
        except BaseException:  # the point of the task
            pass


@app.task(name="interop.sleeps_in_c")
def sleeps_in_c(seconds: float, ignore_soft: bool = False) -> str:
    """A plain function blocked in C: only a process can be stopped there."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(max(deadline - time.monotonic(), 0))
        except SoftTimeLimitExceeded:
            if not ignore_soft:
                return f"cleaned up in {os.getpid()}"
    return "slept"


@app.task(name="interop.quiet", ignore_result=True)
async def quiet() -> str:
    return "not stored"


_counter: redis.asyncio.Redis | None = None


def _redis() -> redis.asyncio.Redis:
    """One client per worker process, on the result backend's Redis."""
    global _counter  # noqa: PLW0603 - one client per worker process
    if _counter is None:
        _counter = redis.asyncio.Redis.from_url(os.environ["INTEROP_REDIS_URL"])
    return _counter


@app.task(name="interop.count", bind=True)
async def count(self: Any, key: str) -> str:
    """Count this run of this task id in hash ``key`` (on the result backend's Redis)."""
    await _redis().hincrby(key, self.request.id, 1)
    return "celeriac"


@app.task(name="interop.tsum")
async def tsum(numbers: list[int]) -> int:
    """A chord body: the sum of the header's results."""
    return sum(numbers)


@app.task(name="interop.mark")
async def mark(task_id: str, key: str) -> str:
    """An errback of Celery's old style (one argument: the failed task's id): note who failed
    at ``key``."""
    await _redis().set(key, task_id)
    return task_id


@app.task(name="interop.on_error")
async def on_error(request: Any, exc: BaseException, traceback: str | None, key: str) -> None:
    """An errback of Celery's new style, called in the worker with the failed request, the
    exception and the traceback: note them at ``key``."""
    seen = {"id": request.id, "exc": type(exc).__name__, "args": list(exc.args)}
    await _redis().set(key, json.dumps(seen))


@app.task(name="interop.started_at")
async def started_at() -> float:
    """When this run started (unix seconds): for tests on when a task runs."""
    return time.time()
