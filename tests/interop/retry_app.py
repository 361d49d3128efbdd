"""Tasks for the retry, hook, rate-limit and typing interop tests, on the interop app.

Run with ``celeriac worker -A tests.interop.retry_app:app``. Tasks record what happened as
JSON entries on a Redis list named by their first argument (on the result backend's Redis,
``INTEROP_REDIS_URL``), so a test reads real values back rather than trusting the worker.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import redis.asyncio

from runtime import Task

from .app import app

__all__ = ["app"]


class Flaky(Exception):
    """What the retrying tasks raise."""


_async_client: redis.asyncio.Redis | None = None
_sync_client: redis.Redis | None = None


async def mark(key: str, **entry: Any) -> None:
    """Append ``entry`` (with the time) to list ``key``, from a coroutine."""
    global _async_client  # noqa: PLW0603 - one client per worker process
    if _async_client is None:
        _async_client = redis.asyncio.Redis.from_url(os.environ["INTEROP_REDIS_URL"])
    await _async_client.rpush(key, json.dumps({**entry, "at": time.time()}))


def mark_sync(key: str, **entry: Any) -> None:
    """Append ``entry`` (with the time) to list ``key``, from a thread."""
    global _sync_client  # noqa: PLW0603 - one client per worker process
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(os.environ["INTEROP_REDIS_URL"])
    _sync_client.rpush(key, json.dumps({**entry, "at": time.time()}))


# -- retries ---------------------------------------------------------------------------------


@app.task(name="retries.flaky", bind=True)
async def flaky(self: Any, key: str, fails: int, countdown: float) -> dict[str, Any]:
    """Fail ``fails`` times, retrying after ``countdown`` seconds; then say how many retries."""
    await mark(key, retries=self.request.retries)
    if self.request.retries < fails:
        raise self.retry(exc=Flaky("attempt", self.request.retries), countdown=countdown)
    return {"retries": self.request.retries}


@app.task(name="retries.flaky_sync", bind=True)
def flaky_sync(self: Any, key: str, fails: int, countdown: float) -> dict[str, Any]:
    """:func:`flaky` as a plain function, run in a thread."""
    mark_sync(key, retries=self.request.retries)
    if self.request.retries < fails:
        raise self.retry(exc=Flaky("attempt", self.request.retries), countdown=countdown)
    return {"retries": self.request.retries}


@app.task(name="retries.exhaust", bind=True, max_retries=2)
async def exhaust(self: Any, key: str, with_exc: bool) -> None:
    """Retry forever; ``max_retries=2`` ends it."""
    await mark(key, retries=self.request.retries)
    if with_exc:
        raise self.retry(exc=Flaky("gave up"), countdown=0.1)
    raise self.retry(countdown=0.1)


@app.task(name="retries.unlimited", bind=True, max_retries=None)
async def unlimited(self: Any, key: str, fails: int) -> int:
    """Retry ``fails`` times at once, beyond the default limit of 3."""
    await mark(key, retries=self.request.retries)
    if self.request.retries < fails:
        raise self.retry(countdown=0)
    return int(self.request.retries)


@app.task(
    name="retries.auto",
    autoretry_for=(Flaky,),
    retry_backoff=True,
    retry_backoff_max=2,
    retry_jitter=False,
    max_retries=3,
)
def auto(key: str) -> None:
    """Always fail with an exception ``autoretry_for`` names: backoff 1, 2, 2 s, then give up."""
    mark_sync(key)
    raise Flaky("always")


@app.task(name="retries.new_arguments", bind=True)
async def new_arguments(self: Any, key: str, n: int, *, step: int = 1) -> int:
    """Retry once with other arguments (``retry(args=..., kwargs=...)``)."""
    await mark(key, n=n, step=step)
    if self.request.retries == 0:
        raise self.retry(args=(key, n + 10), kwargs={"step": 5}, countdown=0)
    return n * step


@app.task(name="retries.handoff", bind=True)
async def handoff(self: Any, label: str) -> dict[str, Any]:
    """Retry once, later; whoever runs the retry says so (see celery_retry_app)."""
    if self.request.retries == 0:
        raise self.retry(exc=Flaky("to whoever is next"), countdown=1.5)
    return {"by": "celeriac", "retries": self.request.retries}


# -- hooks on a task class ---------------------------------------------------------------------


class Recording(Task[Any, Any]):
    """Records every hook call on list ``args[0]``; sync and async hooks mixed on purpose."""

    max_retries = 1  # an option given as a class attribute, as Celery base classes do

    async def on_success(
        self, retval: Any, task_id: str, args: Any, kwargs: Any
    ) -> None:  # fmt: skip
        await mark(args[0], hook="on_success", retval=retval, task_id=task_id,
                   args=list(args), kwargs=dict(kwargs))  # fmt: skip

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        mark_sync(args[0], hook="on_failure", exc=repr(exc), task_id=task_id, args=list(args),
                  kwargs=dict(kwargs), einfo_type=einfo.type.__name__,
                  einfo_traceback=einfo.traceback)  # fmt: skip

    async def on_retry(
        self, exc: BaseException | None, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        await mark(args[0], hook="on_retry", exc=repr(exc), task_id=task_id, args=list(args),
                   kwargs=dict(kwargs), einfo_type=einfo.type.__name__,
                   request_id=self.request.id)  # fmt: skip

    def after_return(  # noqa: PLR0917 - Celery's signature
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        mark_sync(args[0], hook="after_return", status=status, retval=repr(retval),
                  task_id=task_id, einfo=einfo)  # fmt: skip


@app.task(name="hooks.ok", base=Recording)
async def hooks_ok(key: str, x: int, *, times: int = 2) -> int:
    return x * times


@app.task(name="hooks.fail", base=Recording)
def hooks_fail(key: str) -> None:
    raise Flaky("bad input")


@app.task(name="hooks.retry_once", base=Recording, bind=True)
async def hooks_retry_once(self: Any, key: str) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=Flaky("once more"), countdown=0)
    return "done"


@app.task(name="hooks.retry_forever", base=Recording, bind=True)
async def hooks_retry_forever(self: Any, key: str) -> None:
    raise self.retry(countdown=0)  # the class says max_retries = 1


class Broken(Task[Any, Any]):
    """Every hook raises: the result must survive it."""

    async def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        raise RuntimeError("on_success is broken")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        raise RuntimeError("on_failure is broken")

    def after_return(  # noqa: PLR0917 - Celery's signature
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        raise RuntimeError("after_return is broken")


@app.task(name="hooks.broken_ok", base=Broken, acks_late=True)
async def broken_ok(key: str) -> str:
    await mark(key, ran=True)
    return "kept"


@app.task(name="hooks.broken_fail", base=Broken)
async def broken_fail(key: str) -> None:
    raise Flaky("still recorded")


# -- rate limits and typing ----------------------------------------------------------------------


@app.task(name="limits.tick", rate_limit="10/s")
async def tick(key: str, n: int) -> int:
    """Rate-limited: record when it started."""
    await mark(key, n=n)
    return n


@app.task(name="limits.tock")
async def tock(key: str, n: int) -> int:
    """Not rate-limited; shares the queue with :func:`tick`."""
    await mark(key, n=n)
    return n


@app.task(name="typing.marked")
async def marked(key: str, x: int) -> int:
    """Leaves a mark if it runs at all."""
    await mark(key, x=x)
    return x


@app.task(name="typing.marked_sync", bind=True)
def marked_sync(self: Any, key: str, x: int, *, scale: int = 1) -> int:
    """Bound and run in a thread; leaves a mark if it runs at all."""
    mark_sync(key, x=x)
    return x * scale
