"""The Redis result backend against real Redis, read and written by a real Celery client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio
from celery import Celery

from protocol import ExceptionInfo, ResultMeta, State
from runtime.errors import BackendError
from runtime.results.backend import RedisResultBackend

pytestmark = [pytest.mark.integration, pytest.mark.interop]


class ChargeDeclined(Exception):
    """A task's own exception, which the client has imported."""


@pytest.fixture
def celery_client(redis_url: str) -> Iterator[Celery]:
    app = Celery("client", broker="memory://", backend=redis_url, set_as_current=False)
    yield app
    app.backend.client.close()


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisResultBackend]:
    store = RedisResultBackend.from_url(redis_url)
    yield store
    await store.aclose()


def _done(task_id: str, status: State, result: Any = None, **fields: Any) -> ResultMeta:
    return ResultMeta(
        task_id=task_id, status=status, result=result, date_done=datetime.now(UTC), **fields
    )


async def _until_subscribed(redis_url: str, channel: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(10):
            while not client.pubsub_numsub(channel)[0][1]:
                await asyncio.sleep(0.01)
    finally:
        client.close()


async def test_celery_client_waiting_on_get_wakes_on_our_publish(
    backend: RedisResultBackend, celery_client: Celery, redis_url: str
) -> None:
    """A Celery client blocked in get() is woken by the PUBLISH: its consumer never polls."""
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(
        asyncio.to_thread(celery_client.AsyncResult(task_id).get, timeout=20)
    )
    await _until_subscribed(redis_url, backend.keys.task(task_id))

    assert await backend.store(_done(task_id, State.SUCCESS, {"charged": 1250, "ok": True}))

    assert await waiting == {"charged": 1250, "ok": True}


async def test_failure_reaches_celery_client_as_the_exception(
    backend: RedisResultBackend, celery_client: Celery
) -> None:
    task_id = str(uuid.uuid4())
    exc = ChargeDeclined("card expired", 402)
    await backend.store(
        _done(task_id, State.FAILURE, ExceptionInfo.from_exception(exc), traceback="Traceback…")
    )

    result = celery_client.AsyncResult(task_id)
    with pytest.raises(ChargeDeclined) as caught:
        await asyncio.to_thread(result.get, timeout=10)

    assert caught.value.args == ("card expired", 402)
    assert result.traceback == "Traceback…"
    assert result.state == "FAILURE"


async def test_started_is_visible_to_celery_client(
    backend: RedisResultBackend, celery_client: Celery
) -> None:
    task_id = str(uuid.uuid4())
    await backend.store(
        ResultMeta(task_id=task_id, status=State.STARTED, result={"pid": 1, "hostname": "w@h"})
    )

    result = celery_client.AsyncResult(task_id)

    assert result.state == "STARTED"
    assert result.info == {"pid": 1, "hostname": "w@h"}


async def test_success_is_never_overwritten(backend: RedisResultBackend) -> None:
    task_id = str(uuid.uuid4())
    assert await backend.store(_done(task_id, State.SUCCESS, 1))

    kept = not await backend.store(
        _done(task_id, State.FAILURE, ExceptionInfo("ValueError", ("late",), "builtins"))
    )

    assert kept
    stored = await backend.get(task_id)
    assert stored is not None
    assert (stored.status, stored.result) == (State.SUCCESS, 1)


async def test_msgpack_records_also_protect_success(redis_url: str) -> None:
    backend = RedisResultBackend.from_url(redis_url, serializer="msgpack")
    try:
        task_id = str(uuid.uuid4())
        await backend.store(_done(task_id, State.SUCCESS, b"\x00"))
        assert not await backend.store(_done(task_id, State.STARTED))
        stored = await backend.get(task_id)
        assert stored is not None
        assert stored.result == b"\x00"
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("options", "status", "ttl"),
    [
        ({}, State.SUCCESS, 86_400),
        ({"result_expires": 60}, State.SUCCESS, 60),
        ({"result_expires": 60, "failure_expires": 600}, State.FAILURE, 600),
        ({"result_expires": 60, "failure_expires": 600}, State.SUCCESS, 60),
        ({"result_expires": None}, State.SUCCESS, -1),
    ],
)
async def test_result_expiry(
    redis_url: str, options: dict[str, Any], status: State, ttl: int
) -> None:
    backend = RedisResultBackend.from_url(redis_url, **options)
    task_id = str(uuid.uuid4())
    result = ExceptionInfo("E", (), "m") if status is State.FAILURE else 1
    try:
        await backend.store(_done(task_id, status, result))
        client = redis.Redis.from_url(redis_url)
        actual = client.ttl(backend.keys.task(task_id))
        client.delete(backend.keys.task(task_id))
        client.close()
    finally:
        await backend.aclose()

    assert actual == ttl if ttl < 0 else ttl - 2 <= actual <= ttl


async def test_we_read_what_a_celery_worker_stores(
    backend: RedisResultBackend, celery_client: Celery
) -> None:
    task_id = str(uuid.uuid4())
    celery_client.backend.store_result(task_id, ChargeDeclined("no funds"), "FAILURE")

    meta = await backend.wait_for(task_id, timeout=5)

    assert meta.status is State.FAILURE
    assert meta.exception is not None
    rebuilt = meta.exception.to_exception()
    assert isinstance(rebuilt, ChargeDeclined)
    assert rebuilt.args == ("no funds",)


async def test_wait_for_sees_a_later_store_and_skips_unready_states(
    backend: RedisResultBackend,
) -> None:
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(backend.wait_for(task_id, timeout=10))
    await asyncio.sleep(0.05)
    await backend.store(ResultMeta(task_id=task_id, status=State.STARTED))
    await backend.store(_done(task_id, State.SUCCESS, "done"))

    meta = await waiting

    assert (meta.status, meta.result) == (State.SUCCESS, "done")


async def test_wait_for_times_out(backend: RedisResultBackend) -> None:
    with pytest.raises(TimeoutError):
        await backend.wait_for(str(uuid.uuid4()), timeout=0.2)


async def test_pending_is_none(backend: RedisResultBackend) -> None:
    assert await backend.get(str(uuid.uuid4())) is None


async def test_unreachable_redis_is_a_backend_error() -> None:
    backend = RedisResultBackend.from_url("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(BackendError, match="cannot read the result"):
            await backend.get("x")
    finally:
        await backend.aclose()


async def test_global_keyprefix_matches_celery(redis_url: str) -> None:
    backend = RedisResultBackend.from_url(redis_url, global_keyprefix="tenant1")
    app = Celery("c", broker="memory://", backend=redis_url, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": "tenant1"}
    task_id = str(uuid.uuid4())
    try:
        await backend.store(_done(task_id, State.SUCCESS, 7))
        assert await asyncio.to_thread(app.AsyncResult(task_id).get, timeout=5) == 7
    finally:
        app.backend.client.close()
        await backend.aclose()


class CountingRedis(redis.asyncio.Redis):
    """A real client that counts the commands it sends (a pipeline's count as one)."""

    commands: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return await super().execute_command(*args, **options)


async def test_one_turns_results_are_stored_in_one_round_trip(redis_url: str) -> None:
    """A hundred tasks ending in one turn: one script call stores every record, each
    checked on its own (a SUCCESS already there is kept), in the order they were asked for."""
    client = CountingRedis.from_url(redis_url)
    assert isinstance(client, CountingRedis)  # redis-py types from_url as returning Redis
    client.commands = []
    backend = RedisResultBackend(client)
    ids = [str(uuid.uuid4()) for _ in range(100)]
    assert await backend.store(_done(ids[0], State.SUCCESS, "first"))
    client.commands.clear()

    written = await asyncio.gather(
        backend.store(_done(ids[0], State.FAILURE)),  # SUCCESS is never replaced
        *(backend.store(_done(task_id, State.SUCCESS, n)) for n, task_id in enumerate(ids[1:])),
        backend.store(_done(ids[1], State.FAILURE)),  # after its SUCCESS in the same call: kept
    )

    assert client.commands == ["EVALSHA"]
    assert written == [False, *[True] * 99, False]
    assert [(await backend.get(i)).result for i in ids[:3]] == ["first", 0, 1]  # type: ignore[union-attr]
    await backend.aclose()
