"""One contract for every transport: the same tests over each broker.

Each test speaks only the :class:`runtime.transport.Transport` interface, as the worker does.
A broker joins the contract with one entry in ``_OPENERS``: an async context manager that
yields a function opening a new transport on that broker, and removes what the test left
behind when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
import redis.asyncio

from protocol import WireMessage
from runtime.amqp import AmqpTransport
from runtime.capacity import Slots
from runtime.memory import MemoryBroker, MemoryTransport
from runtime.redis_transport import RedisTransport
from runtime.sqs import SqsTransport
from runtime.transport import QueueSpec, Transport
from tests.consumer import SlotConsumer
from tests.sqs_server import delete_sqs_queues

pytestmark = [pytest.mark.integration]

Factory = Callable[[], Awaitable[Transport]]
Opener = Callable[[pytest.FixtureRequest, str], contextlib.AbstractAsyncContextManager[Factory]]


@contextlib.asynccontextmanager
async def _memory(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Factory]:
    broker = MemoryBroker()

    async def factory() -> Transport:
        return MemoryTransport(broker=broker)

    yield factory


@contextlib.asynccontextmanager
async def _amqp(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Factory]:
    url = request.getfixturevalue("amqp_url")

    async def factory() -> Transport:
        return AmqpTransport(url)

    yield factory
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for name in (queue, f"{queue}.dead"):
            await channel.queue_delete(name)
        await channel.exchange_delete(queue)


@contextlib.asynccontextmanager
async def _redis(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Factory]:
    url = request.getfixturevalue("redis_url")
    # Every key under a prefix of the test's own: the shared unacked hash included.
    options = {"global_keyprefix": f"{queue}:"}

    async def factory() -> Transport:
        return RedisTransport(url, options)

    yield factory
    client = redis.asyncio.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match=f"{queue}:*")]
        if keys:
            await client.delete(*keys)


@contextlib.asynccontextmanager
async def _sqs(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Factory]:
    url = request.getfixturevalue("sqs_url")

    async def factory() -> Transport:
        return SqsTransport(url)

    yield factory
    await delete_sqs_queues(url, [queue, f"{queue}.dead"])


_OPENERS: dict[str, Opener] = {"memory": _memory, "amqp": _amqp, "redis": _redis, "sqs": _sqs}


@pytest.fixture(params=sorted(_OPENERS))
async def make(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[Factory]:
    """Opens connected transports on one broker, queue ``unique_name`` declared; all close
    at the end."""
    opened: list[Transport] = []
    async with _OPENERS[request.param](request, unique_name) as new_transport:

        async def factory() -> Transport:
            transport = await new_transport()
            await transport.connect()
            await transport.declare([QueueSpec(unique_name)])
            opened.append(transport)
            return transport

        yield factory
        for transport in opened:
            await transport.aclose()


def _message(n: int) -> WireMessage:
    return WireMessage(
        b'{"n": %d}' % n,
        "application/json",
        "utf-8",
        {"n": n, "none": None, "list": [1, "a"]},
        {"correlation_id": f"id-{n}", "reply_to": "r", "priority": 0, "delivery_mode": 2},
    )


async def _ready(transport: Transport, queue: str) -> int:
    return (await transport.queue_depth(queue))[0]


async def test_publish_consume_ack(
    make: Factory, unique_name: str, request: pytest.FixtureRequest
) -> None:
    transport = await make()
    await transport.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(transport, [unique_name], Slots(1))

    delivery = await consumer.get()
    await transport.ack(delivery)

    assert delivery.message.body == _message(1).body
    assert delivery.message.headers == _message(1).headers
    assert delivery.message.properties["correlation_id"] == "id-1"
    assert (delivery.queue, delivery.redelivered) == (unique_name, False)
    consumer.slots.give_back()  # an idle consumer is counted (a saturated one may pause)
    # SQS cannot count consumers: queue_depth says None there, and only there.
    consumers = None if request.node.callspec.params["make"] == "sqs" else 1
    async with asyncio.timeout(5):
        while await transport.queue_depth(unique_name) != (0, consumers):
            await asyncio.sleep(0.02)
    await consumer.stop()


async def test_never_more_than_the_free_slots(make: Factory, unique_name: str) -> None:
    transport = await make()
    for n in range(5):
        await transport.publish(_message(n), routing_key=unique_name)
    slots = Slots(2)
    consumer = SlotConsumer(transport, [unique_name], slots)

    first = await consumer.get()
    await consumer.get()
    await transport.ack(first)  # early ack: the task goes on running in its slot
    await consumer.nothing_more()
    assert await _ready(transport, unique_name) == 3

    slots.give_back()
    await consumer.get()
    await consumer.nothing_more()
    assert await _ready(transport, unique_name) == 2
    await consumer.stop()


async def test_reject_requeues_or_drops(make: Factory, unique_name: str) -> None:
    transport = await make()
    await transport.publish(_message(1), routing_key=unique_name)
    slots = Slots(1)
    consumer = SlotConsumer(transport, [unique_name], slots)

    await transport.reject(await consumer.get(), requeue=True)
    slots.give_back()
    again = await consumer.get()
    await transport.reject(again, requeue=False)
    slots.give_back()
    await consumer.nothing_more()

    assert again.redelivered
    assert await _ready(transport, unique_name) == 0
    await consumer.stop()


async def test_dead_letter_moves_it_with_the_reason(make: Factory, unique_name: str) -> None:
    transport = await make()
    await transport.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(transport, [unique_name], Slots(1))

    await transport.dead_letter(await consumer.get(), "unknown task 'x'")
    await consumer.stop()

    assert await _ready(transport, unique_name) == 0
    assert await _ready(transport, f"{unique_name}.dead") == 1


async def test_close_gives_unsettled_deliveries_back(make: Factory, unique_name: str) -> None:
    first = await make()
    await first.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(first, [unique_name], Slots(1))
    await consumer.get()
    await consumer.stop()
    await first.aclose()

    second = await make()
    again = await SlotConsumer(second, [unique_name], Slots(1)).get()

    assert again.redelivered
    assert again.message.body == _message(1).body
