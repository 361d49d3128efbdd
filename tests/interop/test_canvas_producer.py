"""The reverse direction: celeriac's producer sends canvas (``link``, ``link_error``, ``chain``
on ``send_task``; chains, groups and chords with ``send_signature``) to a stock Celery 5.7
worker, on RabbitMQ and on Redis, results in Redis."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from protocol import Signature
from runtime import App, GroupResult, chain, chord, group

from .conftest import Broker

pytestmark = [pytest.mark.integration, pytest.mark.interop]


@pytest.fixture
def celery_worker(
    start_celery_worker: Callable[..., subprocess.Popen[str]], broker: Broker, unique_name: str
) -> None:
    """A stock ``celery worker`` (prefork, 2 processes) on the test's broker and queue."""
    prefix = broker.client_options.get("global_keyprefix", "")
    start_celery_worker(unique_name, broker_url=broker.client_url, keyprefix=prefix)


def _sig(queue: str, name: str, *args: Any, immutable: bool = False, **options: Any) -> Signature:
    return Signature(name, args, options={"queue": queue, **options}, immutable=immutable)


@pytest.mark.usefixtures("celery_worker")
def test_send_task_with_link_link_error_and_chain(
    broker: Broker, redis_url: str, unique_name: str
) -> None:
    q = unique_name
    callback_id, last_id = str(uuid.uuid4()), str(uuid.uuid4())
    marker = f"{q}:errback"

    async def send() -> tuple[Any, ...]:
        app = App("producer", broker=broker.url, result_backend=redis_url)
        try:
            linked = await app.send_task(
                "interop.add", (2, 3), queue=q, link=_sig(q, "interop.add", 10, task_id=callback_id)
            )
            chained = await app.send_task(
                "interop.add",
                (1, 2),
                queue=q,
                chain=[
                    _sig(q, "interop.add", 3),
                    _sig(q, "interop.add", 10, 20, immutable=True),
                    _sig(q, "interop.add", 4, task_id=last_id),
                ],
            )
            failing = await app.send_task(
                "interop.decline", ("no",), queue=q, link_error=_sig(q, "interop.mark", marker)
            )
            with pytest.raises(ValueError, match="no"):
                await failing.get(timeout=30)
            return (
                await linked.get(timeout=30),
                await app.AsyncResult(callback_id).get(timeout=30),
                await chained.get(timeout=30),
                await app.AsyncResult(last_id).get(timeout=30),
                failing.id,
            )
        finally:
            await app.aclose()

    linked, callback, first, last, failed_id = asyncio.run(send())

    assert (linked, callback) == (5, 15)
    assert (first, last) == (3, 34)  # 1+2, then 10+20 ignoring 3, then 30+4
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(marker) == failed_id.encode()
    finally:
        client.close()


@pytest.mark.usefixtures("celery_worker")
def test_send_signature_chain_group_and_chord(
    broker: Broker, redis_url: str, unique_name: str
) -> None:
    q = unique_name

    async def send() -> tuple[Any, ...]:
        app = App("producer", broker=broker.url, result_backend=redis_url)
        try:
            add = [_sig(q, "interop.add", n, n) for n in range(10)]
            chained = await app.send_signature(
                chain(
                    _sig(q, "interop.add", 1, 2),
                    _sig(q, "interop.add", 3),
                    _sig(q, "interop.add", 4),
                )
            )
            grouped = await app.send_signature(group(*add))
            chorded = await app.send_signature(chord(add, _sig(q, "interop.tsum")))
            assert isinstance(grouped, GroupResult)
            return (
                await chained.get(timeout=30),
                await grouped.get(timeout=30),
                await chorded.get(timeout=30),
            )
        finally:
            await app.aclose()

    chained, grouped, chorded = asyncio.run(send())

    assert chained == 10
    assert grouped == [2 * n for n in range(10)]
    assert chorded == 90
