"""Deliveries handed to a :class:`DirectConsumer` in the channel's reader, on a real RabbitMQ
channel: no task per delivery, nothing lost, the reader unharmed by a failing consumer, and
other consumers served as aiormq serves them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.abc
import pytest

from runtime.transports.amqp.dispatch import DirectConsumer, install

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
