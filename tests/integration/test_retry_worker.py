"""Retries inside an embedding application: the edges the interop tests do not reach
(``throw=False``, a retry that cannot be sent, ignored results, extended results)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from celery import Celery

from protocol import State
from runtime import App

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[App]:
    """An app on a broker of its own (``memory://``), results in Redis."""
    application = App(
        "retries", broker=f"memory://{uuid.uuid4().hex}", result_backend=redis_url,
        result_extended=True,
    )  # fmt: skip
    yield application
    await application.aclose()


async def _until(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_retry_without_throw_sends_the_retry_and_the_run_succeeds(app: App) -> None:
    runs: list[int] = []

    @app.task(name="retries.no_throw", bind=True)
    async def no_throw(self: Any) -> str:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            self.retry(countdown=0, throw=False)
            return "first"
        return "second"

    async with app.worker(concurrency=1):
        handle = await no_throw.delay()
        assert await handle.get(timeout=10) == "first"
        await _until(lambda: len(runs) == 2)

    assert runs == [0, 1]
    assert await handle.get(timeout=1) == "first"  # a SUCCESS is never overwritten


async def test_a_retry_that_cannot_be_sent_is_a_failure(app: App) -> None:
    runs: list[int] = []

    @app.task(name="retries.unsendable", bind=True)
    async def unsendable(self: Any, value: Any) -> None:
        runs.append(self.request.retries)
        raise self.retry(args=(object(),), countdown=0)  # json cannot encode it

    async with app.worker(concurrency=1):
        handle = await unsendable.delay(1)
        with pytest.raises(Exception, match="object") as caught:
            await handle.get(timeout=10)

    assert type(caught.value).__name__ == "EncodeError"
    assert await handle.state() is State.FAILURE
    assert runs == [0]


async def test_an_ignored_result_records_no_retry(app: App) -> None:
    runs: list[int] = []

    @app.task(name="retries.quiet", bind=True, ignore_result=True)
    async def quiet(self: Any) -> None:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("x"), countdown=0.3)

    async with app.worker(concurrency=1):
        handle = await quiet.delay()
        await _until(lambda: len(runs) == 1)
        await asyncio.sleep(0.1)
        assert await handle.meta() is None  # no RETRY stored while it waits
        await _until(lambda: len(runs) == 2)


async def test_store_errors_even_if_ignored_records_the_retry(app: App) -> None:
    runs: list[int] = []

    @app.task(
        name="retries.errors_only", bind=True, ignore_result=True,
        store_errors_even_if_ignored=True,
    )  # fmt: skip
    async def errors_only(self: Any) -> None:
        runs.append(self.request.retries)
        raise self.retry(exc=KeyError("x"), countdown=30)

    async with app.worker(concurrency=1, grace=0):
        handle = await errors_only.delay()
        await _until(lambda: runs == [0])
        meta = None
        async with asyncio.timeout(10):
            while meta is None:
                meta = await handle.meta()
                await asyncio.sleep(0.01)

    assert meta.status is State.RETRY
    assert meta.exception is not None
    assert (meta.exception.exc_type, meta.exception.exc_message) == ("KeyError", ("x",))


async def test_extended_results_of_a_retry_read_by_celery(app: App, redis_url: str) -> None:
    """``result_extended``: the RETRY record names the run's retries (0), as Celery's."""

    @app.task(name="retries.extended", bind=True)
    async def extended(self: Any, n: int) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=30)
        return n

    client = Celery("reader", broker="memory://", backend=redis_url, set_as_current=False)
    client.conf.result_extended = True
    try:
        async with app.worker(concurrency=1, grace=0, hostname="w1@test"):
            handle = await extended.delay(3)
            result = client.AsyncResult(handle.id)
            async with asyncio.timeout(10):
                while result.state != "RETRY":
                    await asyncio.sleep(0.01)
        assert (result.name, result.args, result.retries, result.worker) == (
            "retries.extended", [3], 0, "w1@test",
        )  # fmt: skip
        assert result.result is None  # retry() without exc stores no exception
    finally:
        client.backend.client.close()
