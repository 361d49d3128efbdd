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
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from protocol import CeleriacError, WireMessage, from_amqp
from protocol.control import NODE_QUEUE_ARGUMENTS
from protocol.envelopes import AMQP_PROPERTY_NAMES
from runtime.errors import translate_amqp_errors

from .received import BROKER_ERRORS

__all__ = ["AmqpBroadcasting", "declare_exchange", "listen"]

log = logging.getLogger(__name__)

_NODE_QUEUE: dict[str, Any] = {
    "durable": False,
    "exclusive": True,
    "auto_delete": True,
    "arguments": dict(NODE_QUEUE_ARGUMENTS),
}


class AmqpBroadcasting:
    """The :class:`~runtime.transports.base.Broadcasting` methods of the RabbitMQ transport.

    A mixin: the transport provides its connection (``_require``), the publish of a message
    (``_send_wire``) and the set of exchanges declared so far (``_exchanges``).
    """

    _exchanges: set[str]

    def _require(self) -> AbstractRobustConnection:
        raise NotImplementedError

    async def _send_wire(self, message: WireMessage, exchange: str, routing_key: str) -> None:
        raise NotImplementedError

    async def broadcasts(self, exchange: str, queue: str) -> AsyncGenerator[WireMessage, None]:
        """Listen to fanout ``exchange`` through node queue ``queue`` (see :func:`listen`)."""
        return await listen(self._require(), exchange, queue)

    async def broadcast(self, message: WireMessage, *, exchange: str) -> None:
        """Publish to fanout ``exchange`` (declared first, as kombu's mailbox does)."""
        await self._declare_once(exchange, aio_pika.ExchangeType.FANOUT)
        await self._send_wire(message, exchange, "")

    async def reply(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Publish to direct ``exchange``; RabbitMQ drops it if no queue is bound any more."""
        await self._declare_once(exchange, aio_pika.ExchangeType.DIRECT)
        await self._send_wire(message, exchange, routing_key)

    async def emit(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Publish to topic ``exchange`` (declared durable first, as kombu declares
        ``celeryev``: a monitor's declaration must match it)."""
        await self._declare_once(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await self._send_wire(message, exchange, routing_key)

    async def _declare_once(
        self, exchange: str, kind: aio_pika.ExchangeType, *, durable: bool = False
    ) -> None:
        if exchange not in self._exchanges:
            await declare_exchange(self._require(), exchange, kind, durable=durable)
            self._exchanges.add(exchange)


async def declare_exchange(
    connection: AbstractRobustConnection,
    name: str,
    kind: aio_pika.ExchangeType,
    *,
    durable: bool = False,
) -> None:
    """Declare exchange ``name`` (not durable, as kombu's mailboxes, unless ``durable``) on a
    throwaway channel: a refusal closes only that one."""
    with translate_amqp_errors(f"declare exchange {name!r}"):
        async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
            await channel.declare_exchange(name, kind, durable=durable)


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
    with contextlib.suppress(*BROKER_ERRORS):
        await channel.close()
