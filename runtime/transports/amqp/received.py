"""A message as it came off an AMQP channel, and writing its settlement.

The hot path works on aiormq's frames directly: aio-pika's message wrapper costs more per
delivery than the rest of the transport together.
"""

from __future__ import annotations

from collections.abc import Awaitable

import aiormq.abc
import aiormq.exceptions
from aiormq import spec as amqp_spec

__all__ = ["BROKER_ERRORS", "Received", "ack_together", "unless_lost"]

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
    written = channel.create_future()  # aiormq fails it if the channel closes first
    frames = [amqp_spec.Basic.Ack(delivery_tag=message.tag) for message in messages]
    await channel.connection.write_queue.put(
        aiormq.abc.ChannelFrame.marshall(channel.number, frames, drain_future=written)
    )
    await written
