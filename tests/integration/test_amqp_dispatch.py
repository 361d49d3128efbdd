"""Deliveries handed to a :class:`DirectConsumer` in the channel's reader, on a real RabbitMQ
channel: no task per delivery, nothing lost, the reader unharmed by a failing consumer, and
other consumers served as aiormq serves them; and, for a routed consumer, in the connection's
frame reader, the connection kept alive while only deliveries come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.abc
import pytest

from runtime.transports.amqp import frames
from runtime.transports.amqp.dispatch import DirectConsumer, install, route

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """An aiormq channel of its own connection."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        yield await (await connection.channel()).get_underlay_channel()


async def _publish(channel: aiormq.abc.AbstractChannel, queue: str, count: int) -> None:
    await channel.queue_declare(queue, auto_delete=True)
    for n in range(count):
        await channel.basic_publish(b"%d" % n, routing_key=queue)


async def _until(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_direct_consumer_is_called_in_the_reader_without_a_task_each(
    channel: aiormq.abc.AbstractChannel, unique_name: str
) -> None:
    """Five deliveries, every one handed over in the one reader task, in order. aiormq's own
    way runs each in a task of its own: five tasks."""
    assert install(channel)
    await _publish(channel, unique_name, 5)
    seen: list[tuple[bytes, asyncio.Task[Any] | None]] = []

    def deliver(message: aiormq.abc.DeliveredMessage) -> None:
        seen.append((message.body, asyncio.current_task()))

    await channel.basic_consume(unique_name, DirectConsumer(deliver), no_ack=True)
    await _until(lambda: len(seen) == 5)

    assert [body for body, _ in seen] == [b"0", b"1", b"2", b"3", b"4"]
    assert len({task for _, task in seen}) == 1


async def test_the_reader_goes_on_after_a_direct_consumer_fails(
    channel: aiormq.abc.AbstractChannel, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first delivery's callback raises: it is logged, and the next ones still arrive."""
    install(channel)
    await _publish(channel, unique_name, 3)
    seen: list[bytes] = []

    def deliver(message: aiormq.abc.DeliveredMessage) -> None:
        if message.body == b"0":
            raise RuntimeError("boom")
        seen.append(message.body)

    await channel.basic_consume(unique_name, DirectConsumer(deliver), no_ack=True)
    await _until(lambda: len(seen) == 2)

    assert seen == [b"1", b"2"]
    assert "AMQP consumer callback failed" in caplog.text
    assert not channel.is_closed


async def test_other_consumers_still_get_a_task_each(
    channel: aiormq.abc.AbstractChannel, unique_name: str
) -> None:
    """A plain coroutine callback on a changed channel is run as aiormq runs it."""
    install(channel)
    await _publish(channel, unique_name, 3)
    tasks: list[asyncio.Task[Any] | None] = []

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        tasks.append(asyncio.current_task())

    await channel.basic_consume(unique_name, on_message, no_ack=True)
    await _until(lambda: len(tasks) == 3)

    assert len(set(tasks)) == 3


async def test_without_the_readers_methods_nothing_changes(
    channel: aiormq.abc.AbstractChannel, unique_name: str
) -> None:
    """``install`` refuses what lacks aiormq's reader methods; a direct consumer on a channel
    left as it is is awaited like any callback, and still gets every delivery."""

    class Bare:
        def __init__(self) -> None:
            self.consumers: dict[str, Any] = {}

    assert not install(Bare())  # type: ignore[arg-type]  # a stand-in without the methods
    await _publish(channel, unique_name, 3)
    seen: list[bytes] = []
    await channel.basic_consume(
        unique_name, DirectConsumer(lambda message: seen.append(message.body)), no_ack=True
    )
    await _until(lambda: len(seen) == 3)

    assert seen == [b"0", b"1", b"2"]


# Routed consumers: deliveries handed over by the connection's frame reader.


@pytest.fixture
async def reader_connection(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A connection read by celeriac's frame reader, one heartbeat a second: aiormq closes
    it after six seconds ((1 + 1) x 3) in which no frame reaches the connection's reader."""
    frames.install()  # as the transport does; process-wide and idempotent
    connection = await aio_pika.connect(f"{amqp_url}?heartbeat=1")
    async with connection:
        yield connection


async def test_a_routed_consumer_is_handed_whole_deliveries_in_the_connections_reader(
    reader_connection: aio_pika.abc.AbstractConnection, unique_name: str
) -> None:
    """Bodies of any size (RabbitMQ cuts one larger than its frame_max, 128 KiB, into several
    frames; an empty one has none) reach the consumer whole, in order, in the connection's
    reader task: the channel's reader never sees them."""
    channel = await (await reader_connection.channel()).get_underlay_channel()
    install(channel)
    bodies = [b"small", b"", bytes(range(256)) * 1200, b"last"]  # the third: 300 KiB
    await channel.queue_declare(unique_name, auto_delete=True)
    for body in bodies:
        await channel.basic_publish(body, routing_key=unique_name)
    in_channel_reader: list[Any] = []
    channel._on_deliver_frame = in_channel_reader.append  # type: ignore[attr-defined]
    seen: list[tuple[bytes, asyncio.Task[Any] | None]] = []

    def deliver(message: aiormq.abc.DeliveredMessage) -> None:
        seen.append((message.body, asyncio.current_task()))

    tag = f"ctag{channel.number}.{unique_name}"
    route(channel, tag)
    await channel.basic_consume(unique_name, DirectConsumer(deliver), consumer_tag=tag, no_ack=True)
    await _until(lambda: len(seen) == len(bodies))

    assert [body for body, _ in seen] == bodies
    assert {getattr(task.get_coro(), "__qualname__", None) for _, task in seen if task} == {
        "Connection.__reader"
    }
    assert in_channel_reader == []


async def test_a_connection_handing_only_deliveries_over_stays_up(
    reader_connection: aio_pika.abc.AbstractConnection, amqp_url: str, unique_name: str
) -> None:
    """Eight seconds of deliveries every 20 ms and no other frame: RabbitMQ sends no
    heartbeat while it sends deliveries, so only the reader telling the connection that
    frames came keeps aiormq from closing it as stuck after six seconds."""
    channel = await (await reader_connection.channel()).get_underlay_channel()
    install(channel)
    await channel.queue_declare(unique_name, auto_delete=True)
    seen: list[bytes] = []
    tag = f"ctag{channel.number}.{unique_name}"
    route(channel, tag)
    await channel.basic_consume(
        unique_name,
        DirectConsumer(lambda message: seen.append(message.body)),
        consumer_tag=tag,
        no_ack=True,
    )
    publisher = await aio_pika.connect(amqp_url)
    async with publisher:
        publishing = await (await publisher.channel()).get_underlay_channel()
        for n in range(400):
            await publishing.basic_publish(b"%d" % n, routing_key=unique_name)
            await asyncio.sleep(0.02)
    await _until(lambda: len(seen) == 400)

    assert not reader_connection.is_closed
    assert not channel.is_closed
