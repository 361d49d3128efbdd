"""One contract for every transport: the same tests over each broker.

Each test speaks only the :class:`runtime.transports.base.Transport` interface, as the worker does.
A broker joins the contract with one entry in ``_OPENERS``: an async context manager that
yields a function opening a new transport on that broker, and removes what the test left
behind when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, urlsplit

import aio_pika
import pytest
import redis.asyncio

from protocol import WireMessage
from runtime.transports.amqp.transport import AmqpTransport
from runtime.transports.base import QueueSpec, Transport
from runtime.transports.memory import MemoryBroker, MemoryTransport
from runtime.transports.redis.transport import RedisTransport
from runtime.transports.sqs import SqsTransport
from runtime.worker.slots import Slots
from tests.consumer import SlotConsumer
from tests.proxy import TcpProxy
from tests.sqs_server import delete_sqs_queues

pytestmark = [pytest.mark.integration]

#: Seconds a Redis or SQS delivery stays claimed without renewal: short, so that the crash
#: test sees a dead consumer's messages come back within a test.
VISIBILITY = 1


class Broker:
    """Opens transports on one broker for a test; ``crash`` cuts one off as if it died."""

    def __init__(self, open_: Callable[[str | None], Transport], target: str | None) -> None:
        self._open = open_
        self._target = target  # the URL a TcpProxy fronts for crashable transports
        self._proxies: dict[int, TcpProxy] = {}
        self.opened: list[Transport] = []

    async def new(self, *, crashable: bool = False) -> Transport:
        """A connected transport with the test's queue declared."""
        proxy = TcpProxy(self._target) if crashable and self._target else None
        transport = self._open(proxy.url if proxy else None)
        if proxy is not None:
            self._proxies[id(transport)] = proxy
        await transport.connect()
        self.opened.append(transport)
        return transport

    def crash(self, transport: Transport) -> None:
        """Cut ``transport`` off from the broker for good, as a killed process would be."""
        self._proxies[id(transport)].refuse()

    async def aclose(self) -> None:
        """Close every transport and proxy opened."""
        for transport in self.opened:
            await transport.aclose()
        for proxy in self._proxies.values():
            proxy.close()


Opener = Callable[[pytest.FixtureRequest, str], contextlib.AbstractAsyncContextManager[Broker]]


@contextlib.asynccontextmanager
async def _memory(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Broker]:
    broker = MemoryBroker()
    yield Broker(lambda _url: MemoryTransport(broker=broker), None)


@contextlib.asynccontextmanager
async def _amqp(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Broker]:
    url = request.getfixturevalue("amqp_url")
    yield Broker(lambda proxied: AmqpTransport(proxied or url), url)
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for name in (queue, f"{queue}.dead"):
            await channel.queue_delete(name)
        await channel.exchange_delete(queue)


@contextlib.asynccontextmanager
async def _redis(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Broker]:
    url = request.getfixturevalue("redis_url")
    # Every key under a prefix of the test's own: the shared unacked hash included.
    options = {"global_keyprefix": f"{queue}:", "visibility_timeout": VISIBILITY}
    yield Broker(lambda proxied: RedisTransport(proxied or url, options), url)
    client = redis.asyncio.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match=f"{queue}:*")]
        if keys:
            await client.delete(*keys)


@contextlib.asynccontextmanager
async def _sqs(request: pytest.FixtureRequest, queue: str) -> AsyncIterator[Broker]:
    url = request.getfixturevalue("sqs_url")
    endpoint = dict(parse_qsl(urlsplit(url).query))["endpoint_url"]

    def open_(proxied: str | None) -> Transport:
        # The proxy fronts the SQS endpoint, which the URL's query names (and the query wins
        # over options).
        target = url.replace(quote(endpoint, safe=""), quote(proxied, safe="")) if proxied else url
        return SqsTransport(target, {"visibility_timeout": VISIBILITY})

    yield Broker(open_, endpoint)
    await delete_sqs_queues(url, [queue, f"{queue}.dead"])


_OPENERS: dict[str, Opener] = {"memory": _memory, "amqp": _amqp, "redis": _redis, "sqs": _sqs}


@pytest.fixture(params=sorted(_OPENERS))
async def broker(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[Broker]:
    """The broker under test; everything opened on it closes at the end."""
    async with _OPENERS[request.param](request, unique_name) as opened:
        yield opened
        await opened.aclose()


Factory = Callable[[], Awaitable[Transport]]


@pytest.fixture
def make(broker: Broker, unique_name: str) -> Factory:
    """Opens a connected transport on the broker, queue ``unique_name`` declared."""

    async def factory() -> Transport:
        transport = await broker.new()
        await transport.declare([QueueSpec(unique_name)])
        return transport

    return factory


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
    consumers = None if request.node.callspec.params["broker"] == "sqs" else 1
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


async def test_an_ack_whose_caller_is_cancelled_is_still_made(
    make: Factory, unique_name: str
) -> None:
    """A handler cancelled while its ack is on the way (a shutdown, a hard limit) does not
    take the ack back: the message is not given back when the transport closes."""
    first = await make()
    await first.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(first, [unique_name], Slots(1))
    delivery = await consumer.get()

    acking = asyncio.ensure_future(first.ack(delivery))
    await asyncio.sleep(0)  # the ack is asked for, and waited on
    acking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acking
    await consumer.stop()
    await first.aclose()  # gives back what is unsettled

    second = await make()
    again = SlotConsumer(second, [unique_name], Slots(1))
    await again.nothing_more()
    await again.stop()
    assert await _ready(second, unique_name) == 0


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


async def test_close_while_consuming_ends_the_iteration_and_loses_nothing(
    make: Factory, unique_name: str
) -> None:
    """``aclose`` from elsewhere while a consumer waits (a slot free, nothing to get) or is
    suspended (its slots all taken): the iteration ends and the held message comes back."""
    busy, idle = await make(), await make()
    await busy.publish(_message(1), routing_key=unique_name)
    holding = SlotConsumer(busy, [unique_name], Slots(1))
    await holding.get()
    waiting = SlotConsumer(idle, [unique_name], Slots(1))
    await asyncio.sleep(0.2)  # let it start waiting

    await idle.aclose()
    await busy.aclose()
    async with asyncio.timeout(5):
        await asyncio.gather(waiting.task, holding.task, return_exceptions=True)

    other = await make()
    again = await SlotConsumer(other, [unique_name], Slots(1)).get()
    assert again.message.body == _message(1).body


@pytest.mark.parametrize("broker", ["amqp", "redis", "sqs"], indirect=True)
async def test_a_crashed_consumers_message_is_redelivered(broker: Broker, unique_name: str) -> None:
    """The consumer's connection dies and never comes back (a killed process): its unsettled
    message goes to another consumer, marked redelivered. RabbitMQ requeues it when the
    connection drops; Redis and SQS once its claim or visibility lapses. (``memory://``
    runs in the consumer's own process: there is no connection to cut.)"""
    doomed = await broker.new(crashable=True)
    await doomed.declare([QueueSpec(unique_name)])
    await doomed.publish(_message(1), routing_key=unique_name)
    held = await SlotConsumer(doomed, [unique_name], Slots(1)).get()

    broker.crash(doomed)
    survivor = await broker.new()
    again = await SlotConsumer(survivor, [unique_name], Slots(1)).get(timeout=15)

    assert again.message.body == held.message.body
    assert again.redelivered


async def test_defer_brings_the_message_back_whole_by_its_eta(
    make: Factory, unique_name: str
) -> None:
    """Deferred, a message is neither held nor waiting in its queue; it comes back unchanged
    at most about a second before its ETA and never after it."""
    transport = await make()
    await transport.publish(_message(1), routing_key=unique_name)
    slots = Slots(1)
    consumer = SlotConsumer(transport, [unique_name], slots, settle=1.0)
    eta = datetime.now(UTC) + timedelta(seconds=2.5)

    await transport.defer(await consumer.get(), eta)
    slots.give_back()
    await consumer.nothing_more()  # not back a second after being deferred
    assert await _ready(transport, unique_name) == 0
    back = await consumer.get()
    arrived = datetime.now(UTC)

    assert eta - timedelta(seconds=1.2) <= arrived <= eta + timedelta(seconds=0.7)
    assert back.message.body == _message(1).body
    # RabbitMQ's delay queues dead-letter it on: it comes back with their x-death records.
    headers = {k: v for k, v in back.message.headers.items() if "death" not in k}
    assert headers == _message(1).headers
    assert (back.queue, back.routing_key) == (unique_name, unique_name)
    await transport.ack(back)
    await consumer.stop()


async def test_a_deferred_message_outlives_the_transport_that_deferred_it(
    make: Factory, unique_name: str
) -> None:
    first = await make()
    await first.publish(_message(1), routing_key=unique_name)
    consumer = SlotConsumer(first, [unique_name], Slots(1))
    await first.defer(await consumer.get(), datetime.now(UTC) + timedelta(seconds=1.5))
    await consumer.stop()
    await first.aclose()

    second = await make()
    back = await SlotConsumer(second, [unique_name], Slots(1)).get(timeout=5)

    assert back.message.body == _message(1).body
    await second.ack(back)
