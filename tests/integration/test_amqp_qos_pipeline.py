"""``QosPipeline`` on a real RabbitMQ channel: a lower prefetch written in front of the acks
holds the bound, and the broker's replies never stand in for another RPC's.

Both ways are checked: pipelined on aiormq's channel, and one plain RPC per ``basic.qos`` on
a channel without aiormq's queue of replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aio_pika
import aiormq.abc
import pytest

from runtime.transports.amqp.received import BROKER_ERRORS, QosPipeline, Received
from tests.amqp_replies import HeldReplies

pytestmark = [pytest.mark.integration]


class _WithoutReplyQueue:
    """An aiormq channel as seen through a wrapper that lacks its queue of RPC replies."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        if name == "rpc_frames":
            raise AttributeError(name)
        return getattr(self._channel, name)


_Callback = Callable[[aiormq.abc.DeliveredMessage], Coroutine[None, None, None]]
_Filled = tuple[aiormq.abc.AbstractChannel, asyncio.Queue[Received], _Callback, str]


@pytest.fixture
async def filled(amqp_url: str, unique_name: str) -> AsyncIterator[_Filled]:
    """A channel with a queue of 6 messages nobody consumes yet: the channel, what arrives,
    the consumer callback that puts it there, and the queue's name."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await (await connection.channel()).get_underlay_channel()
        await channel.queue_declare(unique_name, auto_delete=False)
        for n in range(6):
            await channel.basic_publish(b"%d" % n, routing_key=unique_name)
        received: asyncio.Queue[Received] = asyncio.Queue()

        async def on_message(delivered: aiormq.abc.DeliveredMessage) -> None:
            received.put_nowait(Received(delivered))

        try:
            yield channel, received, on_message, unique_name
        finally:
            await channel.queue_delete(unique_name)


@pytest.fixture
async def consumed(
    filled: _Filled,
) -> tuple[aiormq.abc.AbstractChannel, asyncio.Queue[Received], str]:
    """That channel consuming the queue at a global prefetch of 2, its deliveries, and the
    queue's name."""
    channel, received, on_message, queue = filled
    await channel.basic_qos(prefetch_count=2, global_=True)
    await channel.basic_consume(queue, on_message)
    return channel, received, queue


async def _ready(channel: aiormq.abc.AbstractChannel, queue: str) -> int:
    ok = await channel.queue_declare(queue, passive=True)
    return ok.message_count or 0


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "plain-rpc"])
async def test_a_lower_prefetch_written_before_the_acks_holds_the_bound(
    consumed: tuple[aiormq.abc.AbstractChannel, asyncio.Queue[Received], str], pipelined: bool
) -> None:
    channel, received, queue = consumed
    async with asyncio.timeout(15):  # a reply read by the wrong party hangs: fail, not wait
        first, second = await received.get(), await received.get()
        pipeline = QosPipeline(channel if pipelined else _WithoutReplyQueue(channel))  # type: ignore[arg-type]

        # Both still run, so no slot is free: the first is acked early, the prefetch drops to 1.
        await pipeline.write(prefetch=1, settlements=[(first, None)])
        await pipeline.write(prefetch=1)
        await asyncio.sleep(0.5)
        assert received.empty()
        # An RPC after the pipelined writes gets its own reply, not one of theirs.
        assert await _ready(channel, queue) == 4

        # Rejected, dropped: two free slots.
        await pipeline.write(prefetch=2, settlements=[(second, False)])
        third, fourth = await received.get(), await received.get()
        assert (third.delivered.body, fourth.delivered.body) == (b"2", b"3")  # type: ignore[union-attr]
        await asyncio.sleep(0.5)
        assert received.empty()
        assert await _ready(channel, queue) == 2


async def test_confirmed_waits_for_the_brokers_reply_to_every_write_so_far(
    consumed: tuple[aiormq.abc.AbstractChannel, asyncio.Queue[Received], str],
) -> None:
    channel, received, _ = consumed
    async with asyncio.timeout(15):
        first = await received.get()
        held = channel.rpc_frames = HeldReplies(channel.rpc_frames)  # type: ignore[attr-defined]
        pipeline = QosPipeline(channel)
        await pipeline.write(prefetch=1, settlements=[(first, None)])  # written, not yet confirmed
        confirmed = asyncio.ensure_future(pipeline.confirmed())
        await asyncio.sleep(0.3)
        assert not confirmed.done()
        held.gate.set()
        await confirmed
        await pipeline.confirmed()  # nothing written since: at once


async def test_a_connection_lost_while_a_reply_is_owed_fails_the_wait_and_frees_the_pipeline(
    amqp_url: str, unique_name: str
) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await (await connection.channel()).get_underlay_channel()
    try:
        await channel.queue_declare(unique_name, exclusive=True)
        channel.rpc_frames = HeldReplies(channel.rpc_frames)  # type: ignore[attr-defined]
        pipeline = QosPipeline(channel)
        async with asyncio.timeout(15):
            await pipeline.write(prefetch=3)  # its reply never comes: the connection goes first
            confirmed = asyncio.ensure_future(pipeline.confirmed())
            await asyncio.sleep(0.1)
            await channel.connection.close()
            with pytest.raises(BROKER_ERRORS):
                await confirmed
            await pipeline.confirmed()  # no reply will come: nothing to wait for
    finally:
        await connection.close()


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "plain-rpc"])
async def test_a_consumer_cancelled_and_started_again_under_its_tag_loses_no_delivery(
    filled: _Filled, pipelined: bool
) -> None:
    channel, received, on_message, queue = filled
    consumer = (queue, "ctag-test", on_message)
    pipeline = QosPipeline(channel if pipelined else _WithoutReplyQueue(channel))  # type: ignore[arg-type]
    async with asyncio.timeout(15):
        # Started and cancelled back to back: what the broker sent in between still
        # arrives (aiormq would drop a delivery for a tag it no longer knows).
        await pipeline.write(prefetch=2, consume=[consumer])
        await pipeline.write(cancel=["ctag-test"])
        await asyncio.sleep(0.5)
        early = [received.get_nowait() for _ in range(received.qsize())]
        assert await _ready(channel, queue) == 6 - len(early)

        await pipeline.write(consume=[consumer], settlements=[(m, None) for m in early])
        rest = [await received.get() for _ in range(2)]
        await pipeline.write(cancel=["ctag-test"], settlements=[(m, None) for m in rest])
        await asyncio.sleep(0.5)
        assert received.empty()  # cancelled before the acks made room
        assert await _ready(channel, queue) == 4 - len(early)
        assert not channel.is_closed  # the tag was taken again without a complaint
