"""Filling, watching and removing the benchmark queues, fast, on RabbitMQ, Redis and SQS.

Messages are Celery protocol v2, encoded by :mod:`protocol` exactly as Celery's client encodes
them (the golden tests prove it), and written in bulk: through an unconfirmed AMQP channel,
pipelined ``LPUSH``\\ es of kombu's envelope, or ``SendMessageBatch`` calls
(:mod:`benchmarks.sqs_queues`). A Celery client's ``send_task`` would take longer to pre-load
30,000 messages than most scenarios take to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import redis.asyncio

from protocol import TaskMessage, WireMessage, amqp_properties, encode_envelope, encode_task
from protocol.kombu_redis import RedisLayout
from runtime.transports.amqp.transport import AmqpTransport
from runtime.transports.base import QueueSpec

__all__ = [
    "POLL", "Watch", "delete", "kind", "preload", "publish_amqp", "push_redis", "task",
]  # fmt: skip

_CHUNK = 1000
#: How often queue depths are polled (on SQS, see ``Watch.interval``).
POLL = 0.01
_SQS_POLL_PER_MESSAGE = 0.0004
_SQS_POLL_MAX = 0.2


def kind(broker: str) -> str:
    """``"amqp"``, ``"redis"`` or ``"sqs"`` for a broker URL; ``ValueError`` for anything else."""
    scheme = urlsplit(broker).scheme
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme == "sqs":
        return "sqs"
    raise ValueError(f"benchmarks fill amqp://, redis:// or sqs:// brokers, not {broker!r}")


def task(
    name: str, *args: Any, result: bool = False, eta: datetime | None = None,
    task_id: str | None = None,
) -> WireMessage:  # fmt: skip
    """One Celery v2 message for task ``name``, with ``ignore_result`` set as a Celery client
    sets it: ``True`` unless ``result``; due at ``eta`` if given; its id ``task_id`` or new."""
    task_id = task_id or str(uuid.uuid4())
    message = TaskMessage(
        id=task_id, task=name, args=args, kwargs={}, root_id=task_id,
        ignore_result=not result, origin="bench", eta=eta,
    )  # fmt: skip
    return encode_task(message, now=datetime.now(UTC))


async def preload(broker: str, queue: str, messages: Iterable[WireMessage]) -> int:
    """Declare ``queue`` as Celery does and put ``messages`` in it; returns how many."""
    found = kind(broker)
    if found == "sqs":
        from . import sqs_queues  # noqa: PLC0415 - needs the sqs extra

        return await sqs_queues.preload(broker, queue, messages)
    if found == "amqp":
        return await _preload_amqp(broker, queue, messages)
    return await _preload_redis(broker, queue, messages)


async def _preload_amqp(broker: str, queue: str, messages: Iterable[WireMessage]) -> int:
    transport = AmqpTransport(broker)
    await transport.connect()
    try:
        await transport.declare([QueueSpec(queue)])
    finally:
        await transport.aclose()
    outgoing = (aio_pika.Message(m.body, **amqp_properties(m)) for m in messages)
    return await publish_amqp(broker, queue, outgoing)


async def publish_amqp(broker: str, queue: str, messages: Iterable[aio_pika.Message]) -> int:
    """Publish ``messages`` to the declared ``queue`` through an unconfirmed channel, then wait
    until every one has arrived; returns how many."""
    count = 0
    async with await aio_pika.connect(broker) as connection:
        channel = await connection.channel(publisher_confirms=False)
        for message in messages:
            await channel.default_exchange.publish(message, routing_key=queue)
            count += 1
    async with Watch(broker) as watch:
        while await watch.depth(queue) < count:  # unconfirmed: wait until all arrived
            await asyncio.sleep(0.02)
    return count


async def _preload_redis(broker: str, queue: str, messages: Iterable[WireMessage]) -> int:
    layout = RedisLayout()
    async with redis.asyncio.Redis.from_url(broker) as client:
        await client.sadd(layout.binding_key(queue), layout.binding_member(queue, queue))
    envelopes = (
        encode_envelope(m, exchange="", routing_key=queue, delivery_tag=str(uuid.uuid4()))
        for m in messages
    )
    return await push_redis(broker, layout.queue_key(queue), envelopes)


async def push_redis(broker: str, key: str, payloads: Iterable[bytes]) -> int:
    """``LPUSH`` ``payloads`` onto list ``key``, a thousand a round trip; returns how many."""
    count = 0
    async with redis.asyncio.Redis.from_url(broker) as client:
        batch: list[bytes] = []
        for payload in payloads:
            batch.append(payload)
            if len(batch) == _CHUNK:
                count += await _push(client, key, batch)
        count += await _push(client, key, batch)
    return count


async def _push(client: redis.asyncio.Redis, key: str, batch: list[bytes]) -> int:
    if batch:
        await client.lpush(key, *batch)
    pushed, batch[:] = len(batch), []
    return pushed


class Watch:
    """One open connection for polling queue depths (``async with Watch(broker) as w``)."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self._last = 0  # the depth last seen
        self._stack = contextlib.AsyncExitStack()
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._redis: redis.asyncio.Redis | None = None
        self._sqs: Any = None  # an aiobotocore SQS client (the sqs extra is optional)
        self._sqs_urls: dict[str, str] = {}

    async def __aenter__(self) -> Watch:
        found = kind(self.broker)
        if found == "amqp":
            connection = await aio_pika.connect(self.broker)
            self._stack.push_async_callback(connection.close)
            self._channel = await connection.channel()
        elif found == "redis":
            self._redis = redis.asyncio.Redis.from_url(self.broker)
            self._stack.push_async_callback(self._redis.aclose)
        else:
            from . import sqs_queues  # noqa: PLC0415 - needs the sqs extra

            self._sqs = await self._stack.enter_async_context(sqs_queues.sqs_client(self.broker))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    def interval(self) -> float:
        """Seconds to wait before the next look: 10 ms, but on SQS 0.4 ms per message last
        seen (at most 0.2 s), since each look costs moto a scan of the queue and would slow
        the worker it watches."""
        if self._sqs is None:
            return POLL
        return min(_SQS_POLL_MAX, max(POLL, self._last * _SQS_POLL_PER_MESSAGE))

    async def depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (ready, not delivered; on SQS, not yet deleted)."""
        if self._channel is not None:
            declared = await self._channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        if self._sqs is not None:
            from . import sqs_queues  # noqa: PLC0415 - needs the sqs extra

            if queue not in self._sqs_urls:
                self._sqs_urls[queue] = await sqs_queues.queue_url(self._sqs, queue)
            self._last = await sqs_queues.depth(self._sqs, self._sqs_urls[queue])
            return self._last
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in RedisLayout().step_keys(queue):
                pipe.llen(key)
            return int(sum(await pipe.execute()))


async def delete(broker: str, queues: Sequence[str]) -> None:
    """Remove ``queues`` (and their ``.dead`` queues, exchanges and bindings)."""
    if kind(broker) == "sqs":
        from . import sqs_queues  # noqa: PLC0415 - needs the sqs extra

        await sqs_queues.delete(broker, queues)
        return
    if kind(broker) == "amqp":
        async with await aio_pika.connect(broker) as connection:
            channel = await connection.channel()
            for queue in queues:
                for name in (queue, f"{queue}.dead"):
                    await channel.queue_delete(name)
                await channel.exchange_delete(queue)
        return
    layout = RedisLayout()
    async with redis.asyncio.Redis.from_url(broker) as client:
        for queue in queues:
            await client.delete(
                *layout.step_keys(queue), layout.dead_key(queue), layout.binding_key(queue),
                layout.permanent_binding_key(queue), layout.consumers_key(queue),
            )  # fmt: skip
