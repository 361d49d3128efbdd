"""A message as it came off an AMQP channel, and writing its settlement (behind the
prefetch it needs).

The hot path works on aiormq's frames directly: aio-pika's message wrapper costs more per
delivery than the rest of the transport together.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager

import aiormq.abc
import aiormq.exceptions
from aiormq import spec as amqp_spec

__all__ = [
    "BROKER_ERRORS",
    "Consumer",
    "QosPipeline",
    "Received",
    "ack_together",
    "unless_lost",
]

#: What a broker operation raises when the connection or the channel fails.
BROKER_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError)


class Received:
    """A message as it came off a channel: its frames until they are read, then what
    settling it needs (its channel and delivery tag, and whether it has been settled)."""

    __slots__ = ("channel", "delivered", "settled", "tag")

    def __init__(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        self.delivered: aiormq.abc.DeliveredMessage | None = delivered
        self.channel = delivered.channel
        self.tag = delivered.delivery_tag or 0
        self.settled = False

    def take(self) -> aiormq.abc.DeliveredMessage:
        """The frames, handed over once to be read: a run that waits for minutes then holds
        only what settling needs, not aiormq's objects and a second header table (~1.2 KiB)."""
        delivered, self.delivered = self.delivered, None
        if delivered is None:
            raise RuntimeError("a delivery's frames are read once")
        return delivered

    @property
    def lost(self) -> bool:
        """Whether the channel it arrived on has closed (the broker then redelivers it)."""
        return self.channel.is_closed


async def unless_lost(message: Received, operation: Awaitable[None]) -> None:
    """Await ``operation`` on ``message``'s channel; a broker error is ignored if that channel
    has closed meanwhile (the broker then redelivers the message anyway)."""
    try:
        await operation
    except BROKER_ERRORS:
        if not message.lost:
            raise


async def ack_together(messages: list[Received]) -> None:
    """Ack ``messages`` with one write, waiting until it has left (frames of a closed channel
    are dropped: the broker redelivers those messages).

    aiormq writes each ``basic_ack`` call to the socket on its own; a burst of acks in one
    frame set costs one system call.
    """
    channel = messages[0].channel
    if any(message.channel is not channel for message in messages):  # a reconnect mid-batch
        for message in messages:
            await ack_together([message])
        return
    if channel.is_closed:
        return
    frames: list[aiormq.abc.FrameType] = [
        amqp_spec.Basic.Ack(delivery_tag=message.tag) for message in messages
    ]
    await (await _queue(channel, frames))


#: A consumer to start: ``(queue, consumer tag, callback)``.
Consumer = tuple[str, str, Callable[[aiormq.abc.DeliveredMessage], Coroutine[None, None, None]]]


class QosPipeline:
    """A channel's flow control written without waiting for the broker's replies: the
    global ``basic.qos``, consumers cancelled and started again, and the settlements that
    must follow them, in one write.

    RabbitMQ handles a channel's methods in order, so it applies a lower prefetch (or a
    cancelled consumer) before any ack written after it makes room: the prefetch bound holds,
    and a task acked as it starts waits for a local write rather than a round trip to the
    broker. The ``basic.qos`` replies are read in the background, in order. From the first
    write until the last reply is read the pipeline holds the channel's RPC lock, so no other
    RPC reads one of them as its own.

    ``basic.cancel`` and ``basic.consume`` go *no-wait* (no reply at all) under the same
    consumer tag each time, and the consumer's callback stays registered with aiormq in
    between: a delivery the broker sent before it read the cancel still reaches it (aiormq
    drops a delivery for a tag it does not know, and it would never be settled).

    That needs aiormq's channel lock, queue of replies and table of consumers; on a channel
    without them each method is a plain RPC, confirmed before the settlements go out.
    """

    __slots__ = ("_confirmed", "_fits", "_held", "_read", "_reader", "_written", "channel")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        replies = getattr(channel, "rpc_frames", None)
        self._fits = (
            isinstance(replies, asyncio.Queue)
            and hasattr(channel, "lock")
            and isinstance(getattr(channel, "consumers", None), dict)
        )
        self._held: AbstractAsyncContextManager[None] | None = None
        self._written = self._read = 0  # basic.qos frames written, replies read
        self._confirmed: deque[tuple[int, asyncio.Future[None]]] = deque()  # waiting for replies
        self._reader: Awaitable[None] | None = None

    async def write(
        self,
        *,
        prefetch: int | None = None,
        cancel: Sequence[str] = (),
        consume: Sequence[Consumer] = (),
        settlements: Sequence[tuple[Received, bool | None]] = (),
    ) -> None:
        """Write, in this order: a global ``basic.qos`` of ``prefetch`` (unless ``None``), a
        ``basic.cancel`` of each consumer tag in ``cancel``, a ``basic.consume`` of each of
        ``consume``, and the settlements (``None``: ack, else reject with that ``requeue``);
        return once they have left."""
        channel = self.channel
        frames: list[aiormq.abc.FrameType] = [
            amqp_spec.Basic.Ack(delivery_tag=message.tag)
            if requeue is None
            else amqp_spec.Basic.Reject(delivery_tag=message.tag, requeue=requeue)
            for message, requeue in settlements
        ]
        if not self._fits:
            if prefetch is not None:
                await channel.basic_qos(prefetch_count=prefetch, global_=True)
            for tag in cancel:
                await channel.basic_cancel(tag)
            for queue, tag, callback in consume:
                await channel.basic_consume(queue, callback, consumer_tag=tag)
            if frames:
                await (await _queue(channel, frames))
            return
        methods: list[aiormq.abc.FrameType] = []
        if prefetch is not None:
            methods.append(amqp_spec.Basic.Qos(prefetch_count=prefetch, global_=True))
            if self._held is None:
                held = channel.lock  # type: ignore[attr-defined]
                await held.__aenter__()
                self._held = held
        methods += [amqp_spec.Basic.Cancel(consumer_tag=tag, nowait=True) for tag in cancel]
        consumers = channel.consumers  # type: ignore[attr-defined]
        for queue, tag, callback in consume:
            consumers[tag] = callback  # again: a cancel by the broker took it out
            methods.append(amqp_spec.Basic.Consume(queue=queue, consumer_tag=tag, nowait=True))
        drained = await _queue(channel, [*methods, *frames])
        if prefetch is not None:
            self._written += 1
            if self._reader is None:  # a task of the channel's own: closing the channel ends it
                self._reader = channel.create_task(self._read_replies())
        await drained

    async def confirmed(self) -> None:
        """Wait until the broker has confirmed every ``basic.qos`` written so far; fails with
        a broker error if the channel closes first, and returns at once if it has."""
        if self._reader is not None and self._read < self._written:
            # Resolved or failed by the reader, which closing the channel ends.
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._confirmed.append((self._written, waiter))
            await waiter

    async def _read_replies(self) -> None:
        replies: asyncio.Queue[aiormq.abc.FrameType] = self.channel.rpc_frames  # type: ignore[attr-defined]
        try:
            while self._read < self._written:
                reply = await replies.get()
                replies.task_done()
                self._read += 1
                if not isinstance(reply, amqp_spec.Basic.QosOk):
                    raise aiormq.exceptions.InvalidFrameError(reply)
                while self._confirmed and self._confirmed[0][0] <= self._read:
                    if not (waiter := self._confirmed.popleft()[1]).done():
                        waiter.set_result(None)
        finally:
            self._reader = None
            for _, waiter in self._confirmed:  # only if a reply could not be read
                if not waiter.done():
                    waiter.set_exception(aiormq.exceptions.ChannelInvalidStateError(self.channel))
            self._confirmed.clear()
            held, self._held = self._held, None
            if held is not None:
                await held.__aexit__(None, None, None)  # other RPCs may use the channel now


async def _queue(
    channel: aiormq.abc.AbstractChannel, frames: list[aiormq.abc.FrameType]
) -> asyncio.Future[None]:
    """Queue ``frames`` to leave in one write; the future is done once they have left
    (aiormq fails it if the channel closes first)."""
    drained: asyncio.Future[None] = channel.create_future()
    await channel.connection.write_queue.put(
        aiormq.abc.ChannelFrame.marshall(channel.number, frames, drain_future=drained)
    )
    return drained
