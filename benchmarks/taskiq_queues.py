"""taskiq's messages for its rows: declared, pre-loaded and sent as taskiq writes them.

A taskiq message is its ``TaskiqMessage`` (task id, name, labels, arguments) as taskiq's
broker writes it (its default formatter and JSON serializer). Pre-loading declares the queue
with the same broker object taskiq's worker uses (:func:`benchmarks.taskiq_app.make_broker`),
then writes the bodies in bulk as that broker would one at a time: on RabbitMQ persistent
messages with taskiq's headers through an unconfirmed channel, on Redis ``LPUSH``\\ es onto
the list. The open-loop scenarios send with taskiq's own client, ``AsyncKicker(...).kiq()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import aio_pika
from taskiq import AsyncBroker, TaskiqMessage
from taskiq.kicker import AsyncKicker

from .dialects import Call, Dialect, Publisher
from .queues import kind, publish_amqp, push_redis
from .taskiq_app import make_broker

__all__ = ["TASKIQ"]


def _body(broker: AsyncBroker, call: Call) -> bytes:
    """``call`` as ``broker``'s client writes it (its formatter, its serializer)."""
    if call.eta is not None:
        raise ValueError("taskiq's rows send no ETA tasks (taskiq delays through a queue)")
    message = TaskiqMessage(
        task_id=call.id, task_name=call.name, labels={}, labels_types={}, args=list(call.args),
        kwargs={},
    )  # fmt: skip
    return broker.formatter.dumps(message).message


@contextlib.asynccontextmanager
async def _started(broker: str, queue: str) -> AsyncIterator[AsyncBroker]:
    """taskiq's broker for ``queue`` as a client: its exchange and queue declared."""
    client = make_broker(broker, queue)
    await client.startup()
    try:
        yield client
    finally:
        await client.shutdown()


class _KickerPublisher:
    def __init__(self, broker: AsyncBroker) -> None:
        self._broker = broker

    async def send(self, call: Call) -> None:
        kicker: AsyncKicker[..., object] = AsyncKicker(call.name, self._broker, {})
        await kicker.with_task_id(call.id).kiq(*call.args)


class _Taskiq:
    """taskiq's message format on RabbitMQ (taskiq-aio-pika) and Redis (taskiq-redis)."""

    async def preload(self, broker: str, queue: str, calls: Iterable[Call]) -> int:
        if kind(broker) == "redis":
            writer = make_broker(broker, queue)  # a list needs no declaring
            return await push_redis(broker, queue, (_body(writer, call) for call in calls))
        async with _started(broker, queue) as writer:
            pass  # declared as the worker declares it
        outgoing = (
            aio_pika.Message(
                _body(writer, call), headers={"task_id": call.id, "task_name": call.name},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            for call in calls
        )  # fmt: skip
        return await publish_amqp(broker, queue, outgoing)

    @contextlib.asynccontextmanager
    async def publisher(self, broker: str, queue: str) -> AsyncIterator[Publisher]:
        async with _started(broker, queue) as client:
            yield _KickerPublisher(client)

    def result_key(self, task_id: str) -> str:
        return task_id  # RedisAsyncResultBackend without a prefix

    def stored_at(self, raw: bytes) -> float | None:
        return None  # a taskiq result holds its execution time, not when it was stored


#: taskiq's format.
TASKIQ: Dialect = _Taskiq()
