"""Fanout for remote control on RabbitMQ: a node's pidbox queue, and exchanges declared once.

A worker listens to ``celery.pidbox`` through its own queue ``<nodename>.celery.pidbox``,
declared exactly as kombu declares it (not durable, exclusive, auto-delete, with
``x-expires`` and ``x-message-ttl``), bound with routing key ``""`` and consumed without
acknowledgements. The queue and its consumer live on a robust channel: aio-pika declares,
binds and consumes them again after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from protocol import CeleriacError, WireMessage, from_amqp
from protocol.control import NODE_QUEUE_ARGUMENTS
from protocol.envelopes import AMQP_PROPERTY_NAMES
from runtime.errors import translate_amqp_errors

__all__ = ["declare_exchange", "listen"]

log = logging.getLogger(__name__)

_NODE_QUEUE: dict[str, Any] = {
    "durable": False,
    "exclusive": True,
    "auto_delete": True,
    "arguments": dict(NODE_QUEUE_ARGUMENTS),
}


async def declare_exchange(
    connection: AbstractRobustConnection, name: str, kind: aio_pika.ExchangeType
) -> None:
    """Declare exchange ``name`` as kombu's mailboxes do (not durable), on a throwaway channel:
    a refusal closes only that one."""
    with translate_amqp_errors(f"declare exchange {name!r}"):
        async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
            await channel.declare_exchange(name, kind, durable=False)


async def listen(
    connection: AbstractRobustConnection, exchange: str, queue: str
) -> AsyncGenerator[WireMessage, None]:
    """Declare and consume ``queue`` bound to fanout ``exchange``; the messages, as they come.

    Raises :class:`BrokerConnectionError` if RabbitMQ refuses, e.g. 405 RESOURCE_LOCKED when
    another worker of the same node name holds the exclusive queue.
    """
    # Probe on a throwaway channel first: a refusal closes its channel, and a robust channel
    # would reopen and be refused again, forever. Exclusivity is per connection, so the robust
    # channel may declare the queue again below.
    with translate_amqp_errors(f"declare the remote-control queue {queue!r}"):
        async with aio_pika.Channel(connection, publisher_confirms=False) as probe:
            await probe.declare_queue(queue, **_NODE_QUEUE)
        channel = await connection.channel(publisher_confirms=False)
        inbox: asyncio.Queue[WireMessage] = asyncio.Queue()
        try:
            fanout = await channel.declare_exchange(
                exchange, aio_pika.ExchangeType.FANOUT, durable=False
            )
            declared = await channel.declare_queue(queue, **_NODE_QUEUE)
            await declared.bind(fanout, routing_key="")

            async def received(message: AbstractIncomingMessage) -> None:
                properties = {name: getattr(message, name) for name in AMQP_PROPERTY_NAMES}
                try:
                    wire = from_amqp(
                        message.body,
                        content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        headers=message.headers,
                        properties=properties,
                    )
                except CeleriacError as exc:
                    log.warning("dropping an unreadable broadcast on %r: %s", exchange, exc)
                    return
                inbox.put_nowait(wire)

            await declared.consume(received, no_ack=True)
        except BaseException:
            await _close(channel)
            raise
    return _receive(channel, inbox)


async def _receive(
    channel: AbstractChannel, inbox: asyncio.Queue[WireMessage]
) -> AsyncGenerator[WireMessage, None]:
    try:
        while True:
            yield await inbox.get()
    finally:
        await _close(channel)


async def _close(channel: AbstractChannel) -> None:
    with contextlib.suppress(
        aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError
    ):
        await channel.close()
