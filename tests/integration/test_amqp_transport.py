"""The AMQP transport against a real RabbitMQ, and a real Celery client on the other side.

Flow control is checked against the broker itself: ``queue_depth`` reports the messages
still *ready* in the queue, so any message prefetched beyond the free slots shows up as one
missing there.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any, Protocol

import aio_pika
import aiormq.abc
import pytest
from celery import Celery

from protocol import DEFAULT_LIMITS, WireMessage, amqp_properties, decode_task
from runtime.errors import BrokerConnectionError
from runtime.transports.amqp import transport as amqp_transport
from runtime.transports.amqp.transport import AmqpTransport
from runtime.transports.base import Capacity, Delivery, QueueSpec
from runtime.worker.slots import Slots
from tests.amqp_replies import HeldReplies
from tests.consumer import SlotConsumer

pytestmark = [pytest.mark.integration]

#: How long the broker gets to push messages it should not push.
SETTLE = 0.5


class Connect(Protocol):
    """Connects a transport to the broker, ``query`` appended to its URL."""

    def __call__(self, query: str = "", /) -> Awaitable[AmqpTransport]: ...


@pytest.fixture
async def queue(unique_name: str, amqp_url: str) -> AsyncIterator[str]:
    """A queue name for this test; the queue, its ``.dead`` queue and exchange are deleted after."""
    yield unique_name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (unique_name, f"{unique_name}.dead"):
            await channel.queue_delete(name)
        await channel.exchange_delete(unique_name)


@pytest.fixture
async def connect(amqp_url: str) -> AsyncIterator[Connect]:
    """Connects transports (to ``amqp_url`` plus a query string) and closes them after."""
    opened: list[AmqpTransport] = []

    async def make(query: str = "") -> AmqpTransport:
        client = AmqpTransport(amqp_url + query)
        await client.connect()
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()


@pytest.fixture
async def transport(connect: Connect) -> AmqpTransport:
    return await connect()


@pytest.fixture
async def receivers() -> AsyncIterator[list[SlotConsumer]]:
    """Receivers to stop at the end, whatever the test's outcome."""
    started: list[SlotConsumer] = []
    yield started
    for receiver in started:
        await receiver.stop()


def _message(body: bytes = b'{"n": 1}', **headers: Any) -> WireMessage:
    return WireMessage(body, "application/json", "utf-8", headers)


async def _fill(transport: AmqpTransport, queue: str, count: int) -> None:
    for n in range(count):
        await transport.publish(_message(b'{"n": %d}' % n), routing_key=queue)


async def _ready(transport: AmqpTransport, queue: str) -> int:
    return (await transport.queue_depth(queue))[0]


async def _until(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_publish_consume_ack_round_trips_the_wire_message(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    sent = WireMessage(
        body=b'[[2, 3], {}, {"callbacks": null}]',
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "task": "tasks.add",
            "id": "6d1b9c7e",
            "eta": None,
            "retries": 0,
            "timelimit": [None, 30],
            "stamps": {"k": ["a", 1]},
            "ignore_result": False,
        },
        properties={
            "correlation_id": "6d1b9c7e",
            "reply_to": "c2f7-reply",
            "delivery_mode": 2,
            "priority": 3,
            "expiration": "1001",  # aio-pika's float seconds turn this into 1000 if truncated
        },
    )
    await transport.publish(sent, routing_key=queue)

    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))
    got = await receiver.get()

    assert got.message.body == sent.body
    assert got.message.content_type == "application/json"
    assert got.message.content_encoding == "utf-8"
    assert dict(got.message.headers) == sent.headers
    assert dict(got.message.properties) == sent.properties
    assert (got.queue, got.exchange, got.routing_key, got.redelivered) == (queue, "", queue, False)
    await transport.ack(got)
    receiver.slots.give_back()
    await receiver.stop()
    assert await transport.queue_depth(queue) == (0, 0)


@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
async def test_prefetch_never_exceeds_free_slots(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer], acks_late: bool
) -> None:
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 10)
    slots = Slots(2)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))

    first, second = await receiver.get(), await receiver.get()
    if not acks_late:  # acked at task start; the tasks keep running in their slots
        await transport.ack(first)
        await transport.ack(second)
    await receiver.nothing_more()
    assert await _ready(transport, queue) == 8

    if acks_late:
        await transport.ack(first)  # the task is over: ack, then the slot is given back
        await receiver.nothing_more()
        assert await _ready(transport, queue) == 8
    slots.give_back()
    third = await receiver.get()
    await receiver.nothing_more()
    assert await _ready(transport, queue) == 7
    assert third.message.body == b'{"n": 2}'


async def test_an_early_ack_waits_for_its_write_not_for_the_brokers_qos_reply(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    """Acking a delivery whose slot stays taken lowers the prefetch first; the ack goes out in
    the same write, and the task starts without a round trip to the broker."""
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 10)
    slots = Slots(3)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))
    first, second, _ = await receiver.get(), await receiver.get(), await receiver.get()
    channel = first.handle.channel
    held = channel.rpc_frames = HeldReplies(channel.rpc_frames)
    try:
        async with asyncio.timeout(2):  # the broker's QoS-Ok is held back all along
            await transport.ack(first)
            await transport.ack(second)
        await receiver.nothing_more()  # the broker applied the lower prefetch before the acks
        assert await _ready(transport, queue) == 7
    finally:
        held.gate.set()
    slots.give_back()  # the prefetch rises again once the replies are read
    fourth = await receiver.get()
    await receiver.nothing_more()
    assert await _ready(transport, queue) == 6
    assert fourth.message.body == b'{"n": 3}'


@pytest.mark.parametrize("replies", ["read", "held back"])
async def test_concurrency_one_pauses_and_resumes(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer], replies: str
) -> None:
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 3)
    slots = Slots(1)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))
    first = await receiver.get()
    channel = first.handle.channel
    held = channel.rpc_frames = HeldReplies(channel.rpc_frames)
    if replies == "read":
        held.gate.set()
    try:
        # Held back, no reply of the broker's is read from here on: nothing may wait for one.
        async with asyncio.timeout(2):
            await transport.ack(first)  # early ack: no slot free and nothing unsettled, so pause
        await receiver.nothing_more()
        assert await transport.queue_depth(queue) == (2, 0)  # the consumer was cancelled

        slots.give_back()
        async with asyncio.timeout(2):
            second = await receiver.get()  # consuming again, under the same tag
        await receiver.nothing_more()
        assert await transport.queue_depth(queue) == (1, 1)
        assert second.message.body == b'{"n": 1}'
    finally:
        held.gate.set()


async def test_a_busy_consumer_gets_nothing_while_an_idle_one_takes_all(
    connect: Connect, transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    busy_slots = Slots(1)
    receivers.append(busy := SlotConsumer(transport, [queue], busy_slots))
    await _fill(transport, queue, 1)
    long_task = await busy.get()
    await transport.ack(long_task)  # early ack, the slot stays taken

    receivers.append(idle := SlotConsumer(await connect(), [queue], Slots(1), auto=True))
    await _until(lambda: _consumers_are(transport, queue, 1))
    await _fill(transport, queue, 5)

    got = [(await idle.get()).message.body for _ in range(5)]
    assert got == [b'{"n": %d}' % n for n in range(5)]
    await busy.nothing_more()
    assert busy.count == 1
    assert await _ready(transport, queue) == 0


async def _consumers_are(transport: AmqpTransport, queue: str, count: int) -> bool:
    return (await transport.queue_depth(queue))[1] == count


async def test_reject_requeue_comes_back_and_reject_drops(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 1)
    slots = Slots(1)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))

    first = await receiver.get()
    await transport.reject(first, requeue=True)
    slots.give_back()
    again = await receiver.get()
    assert again.redelivered
    assert again.message.body == first.message.body

    await transport.reject(again, requeue=False)
    slots.give_back()
    await receiver.nothing_more()
    assert await _ready(transport, queue) == 0


async def test_dead_letter_moves_the_message_with_the_reason(
    amqp_url: str, transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    sent = WireMessage(
        b'{"n": 7}',
        "application/json",
        "utf-8",
        {"task": "tasks.nope", "id": "42"},
        {"correlation_id": "42", "expiration": "60000"},
    )
    await transport.publish(sent, routing_key=queue)
    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))

    await transport.dead_letter(await receiver.get(), "unknown task 'tasks.nope'")

    assert await transport.queue_depth(queue) == (0, 0)  # gone; paused, the slot is taken
    assert await _ready(transport, f"{queue}.dead") == 1
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await (await channel.get_queue(f"{queue}.dead")).get(no_ack=True)
    assert dead.body == b'{"n": 7}'
    assert dead.content_type == "application/json"
    assert dead.correlation_id == "42"
    assert dead.expiration is None  # a dead letter does not expire
    assert dead.headers == {
        "task": "tasks.nope",
        "id": "42",
        "x-celeriac-reason": "unknown task 'tasks.nope'",
        "x-celeriac-queue": queue,
    }


async def test_dead_letter_that_cannot_be_published_requeues(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer], amqp_url: str
) -> None:
    await transport.declare([QueueSpec(queue)])
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await (await connection.channel()).queue_delete(f"{queue}.dead")  # unroutable now
    await _fill(transport, queue, 1)
    slots = Slots(1)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))

    with pytest.raises(BrokerConnectionError, match=r"\.dead"):
        await transport.dead_letter(await receiver.get(), "boom")
    slots.give_back()

    assert (await receiver.get()).redelivered


@pytest.fixture
def celery_apps(amqp_url: str) -> Iterator[Any]:
    """Makes Celery clients for ``amqp_url`` and closes their connections at the end."""
    apps: list[Celery] = []

    def make(**settings: Any) -> Celery:
        app = Celery("client", broker=amqp_url, set_as_current=False)
        app.conf.update(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


CELERY_SETTINGS = [
    pytest.param({}, {}, id="classic"),
    pytest.param({"task_queue_max_priority": 10}, {"max_priority": 10}, id="priority"),
    pytest.param({"task_create_missing_queue_type": "quorum"}, {"quorum": True}, id="quorum"),
]


@pytest.mark.interop
@pytest.mark.parametrize(("settings", "spec"), CELERY_SETTINGS)
async def test_celery_publishes_to_a_queue_we_declared(
    transport: AmqpTransport, queue: str, celery_apps: Any, settings: Any, spec: Any
) -> None:
    await transport.declare([QueueSpec(queue, **spec)])
    client = celery_apps(**settings)

    await asyncio.to_thread(client.send_task, "tasks.add", (2, 3), queue=queue)

    await _until(lambda: _has_ready(transport, queue))


async def _has_ready(transport: AmqpTransport, queue: str) -> bool:
    return await _ready(transport, queue) == 1


@pytest.mark.interop
@pytest.mark.parametrize(("settings", "spec"), CELERY_SETTINGS)
async def test_we_declare_a_queue_celery_declared(
    transport: AmqpTransport, queue: str, celery_apps: Any, settings: Any, spec: Any
) -> None:
    client = celery_apps(**settings)
    await asyncio.to_thread(client.send_task, "tasks.add", (2, 3), queue=queue)

    await transport.declare([QueueSpec(queue, **spec)])  # no 406 PRECONDITION_FAILED

    assert await _ready(transport, queue) == 1


@pytest.mark.interop
async def test_celery_task_message_decodes(
    transport: AmqpTransport, queue: str, celery_apps: Any, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    client = celery_apps()
    result = await asyncio.to_thread(
        client.send_task, "tasks.add", (2, 3), {"scale": None}, queue=queue, countdown=None
    )
    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))

    delivery = await receiver.get()
    task = decode_task(delivery.message)

    assert (task.id, task.task, task.args, dict(task.kwargs)) == (
        result.id,
        "tasks.add",
        (2, 3),
        {"scale": None},
    )
    assert task.eta is None  # a void header in the AMQP table
    assert delivery.message.headers["eta"] is None
    assert delivery.routing_key == queue
    await transport.ack(delivery)


async def test_aclose_returns_unsettled_deliveries(
    connect: Connect, queue: str, receivers: list[SlotConsumer]
) -> None:
    first = await connect()
    await first.declare([QueueSpec(queue)])
    await _fill(first, queue, 1)
    receiver = SlotConsumer(first, [queue], Slots(1))
    original = await receiver.get()  # never acked
    await first.aclose()
    await receiver.task  # the iteration ends with the transport

    receivers.append(again := SlotConsumer(await connect(), [queue], Slots(1)))
    redelivered = await again.get()
    assert redelivered.redelivered
    assert redelivered.message.body == original.message.body


async def test_ending_the_iteration_requeues_only_what_was_not_handed_out(
    transport: AmqpTransport, queue: str
) -> None:
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 3)
    slots = Slots(2)
    deliveries = transport.consume([queue], slots)
    assert isinstance(deliveries, AsyncGenerator)
    first = await anext(deliveries)
    slots.take()
    await asyncio.sleep(SETTLE)  # the second slot is free: one more waits in our buffer
    assert await transport.queue_depth(queue) == (1, 1)

    await deliveries.aclose()  # a warm shutdown: stop consuming, let running tasks finish

    assert await transport.queue_depth(queue) == (2, 0)
    await transport.ack(first)  # a running task still settles its message
    slots.give_back()
    assert await transport.queue_depth(queue) == (2, 0)


async def test_settling_after_the_channel_was_lost_is_a_no_op(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 1)
    slots = Slots(1)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))
    lost = await receiver.get()

    await lost.handle.channel.close()  # as a dropped connection would; aio-pika reopens it
    await transport.ack(lost)  # its delivery tag means nothing on the new channel
    slots.give_back()

    again = await receiver.get()
    assert again.redelivered
    assert again.message.body == lost.message.body
    await transport.ack(again)
    slots.give_back()
    await _until(lambda: _consumers_are(transport, queue, 1))  # consuming on the new channel
    assert await _ready(transport, queue) == 0


async def test_publishing_while_the_connection_is_restored_fails_at_once(
    connect: Connect, queue: str
) -> None:
    """As aio-pika's own publish: the caller decides whether to wait and send again."""
    transport = await connect("?reconnect_interval=5")
    await transport.declare([QueueSpec(queue)])
    assert transport._connection is not None
    assert transport._connection.transport is not None
    publisher = transport._publisher
    assert publisher is not None
    await transport._connection.transport.connection.close()  # the socket goes away

    async def publisher_closed() -> bool:
        return bool(publisher.is_closed)

    await _until(publisher_closed)
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):
        await transport.publish(_message(), routing_key=queue)
    assert time.monotonic() - started < 1


async def test_connect_to_a_closed_port_fails_fast() -> None:
    transport = AmqpTransport("amqp://guest:secret@127.0.0.1:1//")
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        await transport.connect()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "\n" not in message
    assert "secret" not in message


async def test_queue_depth_counts_ready_messages_and_consumers(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    assert await transport.queue_depth(queue) == (0, 0)
    await _fill(transport, queue, 3)
    assert await transport.queue_depth(queue) == (3, 0)

    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))
    await receiver.get()
    assert await transport.queue_depth(queue) == (2, 1)
    await receiver.stop()
    assert await transport.queue_depth(queue) == (2, 0)  # the unsettled one is still ours

    with pytest.raises(BrokerConnectionError, match="NOT_FOUND"):
        await transport.queue_depth(f"{queue}-missing")
    assert await transport.queue_depth(queue) == (2, 0)


@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
async def test_quorum_queues_are_fetched_one_per_free_slot(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer], acks_late: bool
) -> None:
    """Quorum queues refuse global QoS: they are read with basic.get, never beyond the slots."""
    other = f"{queue}-b"
    await transport.declare([QueueSpec(queue, quorum=True), QueueSpec(other, quorum=True)])
    await _fill(transport, queue, 5)
    await _fill(transport, other, 5)
    slots = Slots(2)
    receivers.append(receiver := SlotConsumer(transport, [queue, other], slots))

    first, second = await receiver.get(), await receiver.get()
    if not acks_late:
        await transport.ack(first)
        await transport.ack(second)
    await receiver.nothing_more()
    assert await _ready(transport, queue) + await _ready(transport, other) == 8
    assert {first.queue, second.queue} == {queue, other}  # round robin over the queues

    slots.give_back()
    if acks_late:
        await transport.ack(first)
    third = await receiver.get()
    await receiver.nothing_more()
    assert await _ready(transport, queue) + await _ready(transport, other) == 7
    await transport.ack(third)
    if acks_late:
        await transport.ack(second)
    await _delete_queues(transport, other)


async def _delete_queues(transport: AmqpTransport, *names: str) -> None:
    connection = await aio_pika.connect(transport._url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
            await channel.queue_delete(f"{name}.dead")
            await channel.exchange_delete(name)


async def test_declaring_differently_is_a_broker_error(
    transport: AmqpTransport, queue: str
) -> None:
    await transport.declare([QueueSpec(queue)])
    with pytest.raises(BrokerConnectionError, match="PRECONDITION_FAILED"):
        await transport.declare([QueueSpec(queue, max_priority=5)])
    await transport.declare([QueueSpec(queue)])  # the transport still works


class Probed(AmqpTransport):
    """Checks, as each delivery arrives, that what waits unhanded fits the free slots."""

    worst = 0
    probed = 0  # deliveries checked: a probe that never ran proves nothing
    capacity: Capacity | None = None

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.readers: set[asyncio.Task[Any] | None] = set()  # the tasks deliveries came in

    def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        self.capacity = capacity
        return super().consume(queues, capacity)

    def _on_message(self, queue: str, delivered: Any) -> None:
        super()._on_message(queue, delivered)
        self.readers.add(asyncio.current_task())
        if self._buffer is not None and self.capacity is not None:
            self.worst = max(self.worst, self._buffer.qsize() - self.capacity.free)
            self.probed += 1


async def test_flow_control_holds_under_load(amqp_url: str, queue: str) -> None:
    """Mixed early and late acks, tasks of uneven length: never a delivery beyond the slots."""
    transport = Probed(amqp_url)
    await transport.connect()
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 60)
    slots = Slots(3)
    done = asyncio.Event()
    finished = 0

    async def run(delivery: Delivery, n: int) -> None:
        nonlocal finished
        late = n % 2 == 0
        if not late:
            await transport.ack(delivery)
        await asyncio.sleep((n % 5) * 0.01)
        if late:
            await transport.ack(delivery)
        slots.give_back()
        finished += 1
        if finished == 60:
            done.set()

    async def work() -> None:
        tasks: set[asyncio.Task[None]] = set()
        async for delivery in transport.consume([queue], slots):
            slots.take()
            task = asyncio.create_task(run(delivery, len(tasks)))
            tasks.add(task)

    consuming = asyncio.create_task(work())
    try:
        async with asyncio.timeout(30):
            await done.wait()
        assert transport.worst <= 0
        assert transport.probed == 60
        assert len(transport.readers) == 1  # the channel's reader: no task per delivery
        assert await _ready(transport, queue) == 0
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
        await transport.aclose()


async def test_an_unreadable_message_is_dead_lettered_not_handed_out(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    await transport.declare([QueueSpec(queue)])
    too_many = {f"h{n}": n for n in range(DEFAULT_LIMITS.max_headers + 1)}
    await transport.publish(_message(b'"unreadable"', **too_many), routing_key=queue)
    await _fill(transport, queue, 1)
    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))

    assert (await receiver.get()).message.body == b'{"n": 0}'  # the readable one
    assert receiver.count == 1
    assert await _ready(transport, f"{queue}.dead") == 1
    assert await _ready(transport, queue) == 0


async def test_headers_nested_past_pythons_stack_are_dead_lettered_and_the_next_delivered(
    amqp_url: str, transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    """Before, every reading of such a header exhausted the stack and killed the connection's
    reader; redelivered, the message did it again, and nothing behind it was ever consumed."""
    await transport.declare([QueueSpec(queue)])
    deep: list[Any] = []
    for _ in range(2_000):  # 10 KB of nested field arrays, which RabbitMQ passes on
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # the publishing side writes the table recursively too
    try:
        await transport.publish(_message(b'"deep"', deep=deep), routing_key=queue)
    finally:
        sys.setrecursionlimit(limit)
    await _fill(transport, queue, 1)
    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))

    async with asyncio.timeout(10):
        assert (await receiver.get()).message.body == b'{"n": 0}'
    assert receiver.count == 1
    assert await _ready(transport, queue) == 0
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await (await channel.get_queue(f"{queue}.dead")).get(no_ack=True)
    assert dead.body == b'"deep"'
    assert dead.headers == {
        "x-celeriac-reason": "unreadable: headers: nested deeper than 100 levels of tables "
        "and arrays",
        "x-celeriac-queue": queue,
    }


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"correlation_id": "c-1", "reply_to": "r.1"},
        {"delivery_mode": 2, "priority": 9},
        {"delivery_mode": 1, "priority": 0, "expiration": "60000"},
        {"correlation_id": 7, "expiration": 3000},  # what aio-pika turns into text too
    ],
)
def test_published_properties_are_those_aio_pikas_message_wrote(
    properties: dict[str, Any],
) -> None:
    """Publishing builds pamqp's properties itself, as aio-pika's ``Message`` did."""
    message = WireMessage(b"{}", "application/json", "utf-8", {"task": "t", "n": 1}, properties)

    by_aio_pika = aio_pika.Message(message.body, **amqp_properties(message)).properties

    assert amqp_transport._outgoing(message).marshal() == by_aio_pika.marshal()


def test_an_expiration_is_published_to_the_millisecond() -> None:
    message = WireMessage(b"{}", "application/json", "utf-8", {}, {"expiration": "1001"})
    assert amqp_transport._outgoing(message).expiration == "1001"  # aio-pika's seconds: "1000"


async def test_a_delivery_handed_out_keeps_none_of_aiormqs_frames(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    """A run that waits for minutes holds its message once: aiormq's frames, and the header
    table read from them, are let go once the delivery is read."""

    def frames() -> list[aiormq.abc.DeliveredMessage]:
        gc.collect()
        return [
            held
            for held in gc.get_objects()
            if isinstance(held, aiormq.abc.DeliveredMessage) and held.routing_key == queue
        ]

    await transport.declare([QueueSpec(queue)])
    await transport.publish(_message(b'{"n": 0}', custom="header"), routing_key=queue)
    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(1)))

    delivery = await receiver.get()

    assert delivery.message.headers == {"custom": "header"}
    assert frames() == []
    await transport.ack(delivery)
    await _until(lambda: _settled(transport, queue))


async def test_deliveries_share_one_copy_of_their_routing_key(
    transport: AmqpTransport, queue: str, receivers: list[SlotConsumer]
) -> None:
    """10,000 waiting runs hold 10,000 deliveries: the routing key each frame brings is read
    into one string object for all of them, not one per delivery."""
    await transport.declare([QueueSpec(queue)])
    for n in range(2):
        await transport.publish(_message(f'{{"n": {n}}}'.encode()), routing_key=queue)
    receivers.append(receiver := SlotConsumer(transport, [queue], Slots(2)))

    first, second = await receiver.get(), await receiver.get()

    assert first.routing_key == queue
    assert first.routing_key is second.routing_key
    for delivery in (first, second):
        await transport.ack(delivery)
    await _until(lambda: _settled(transport, queue))


async def _settled(transport: AmqpTransport, queue: str) -> bool:
    return await transport.queue_depth(queue) == (0, 0)


async def test_consuming_resumes_after_the_connection_drops(
    connect: Connect, queue: str, receivers: list[SlotConsumer]
) -> None:
    transport = await connect("?reconnect_interval=0.2")
    await transport.declare([QueueSpec(queue)])
    await _fill(transport, queue, 3)
    slots = Slots(2)
    receivers.append(receiver := SlotConsumer(transport, [queue], slots))
    lost, running = await receiver.get(), await receiver.get()

    assert transport._connection is not None
    assert transport._connection.transport is not None
    await transport._connection.transport.connection.close()  # the socket goes away
    await transport.ack(lost)  # a no-op: the broker has it back
    slots.give_back()

    again = await receiver.get()  # on the reopened channel, QoS set before consuming
    assert again.redelivered
    assert again.message.body in {lost.message.body, running.message.body}
    await receiver.nothing_more()  # `running` still holds its slot
    assert await transport.queue_depth(queue) == (2, 1)
