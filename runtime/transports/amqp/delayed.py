"""Declaring RabbitMQ's delayed delivery topology (:mod:`protocol.delayed`) for the AMQP
transport: once per connection, and each destination queue's binding once."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractRobustConnection

from protocol.delayed import DelayedDelivery
from runtime.errors import translate_amqp_errors

__all__ = ["DELAYED_DELIVERY", "DelayedQueues"]

log = logging.getLogger(__name__)

#: Celery's delayed delivery layout under celeriac's own names, on classic queues, not
#: Celery's default quorum ones: a quorum queue dead-letters *at least once*, holding each
#: message until a queue takes it, and a message whose destination queue was deleted meanwhile
#: is then retried for ever, stalling every delayed message behind it (seen here on RabbitMQ
#: 3.10: nothing came back at all). A classic queue drops such a message, and a message is at
#: risk only while the node fails in the middle of moving it from one level to the next.
DELAYED_DELIVERY = DelayedDelivery(prefix="celeriac", queue_type="classic")


class DelayedQueues:
    """What of ``layout`` one transport has declared; :meth:`prepare` before each deferral."""

    def __init__(self, layout: DelayedDelivery) -> None:
        self.layout = layout
        self._declared = False
        self._bound: set[str] = set()  # destination queues bound to the delivery exchange
        self._lock = asyncio.Lock()

    async def prepare(self, connection: AbstractRobustConnection, queue: str) -> None:
        """Declare the topology (once), and bind ``queue`` to its exit (once)."""
        if queue in self._bound:
            return
        async with self._lock:
            if not self._declared:
                await self._declare(connection)
                self._declared = True
            if queue not in self._bound:
                binding = self.layout.destination_binding(queue)
                with translate_amqp_errors(f"bind queue {queue!r} for delayed delivery"):
                    async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
                        raw = await channel.get_underlay_channel()
                        await raw.queue_bind(queue, self.layout.delivery, routing_key=binding)
                self._bound.add(queue)

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        topology = self.layout.topology()
        with translate_amqp_errors("declare the delayed delivery topology"):
            async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
                raw = await channel.get_underlay_channel()
                for name in topology.exchanges:
                    await raw.exchange_declare(name, exchange_type="topic", durable=True)
                for name, arguments in topology.queues:
                    try:
                        await raw.queue_declare(name, durable=True, arguments=arguments)
                    except aiormq.exceptions.ChannelPreconditionFailed:
                        # Declared by a Celery set up otherwise (classic level queues): use it.
                        log.info("delayed delivery queue %r exists as declared elsewhere", name)
                        await channel.reopen()
                        raw = await channel.get_underlay_channel()
                for queue, exchange, key in topology.queue_bindings:
                    await raw.queue_bind(queue, exchange, routing_key=key)
                for destination, source, key in topology.exchange_bindings:
                    await raw.exchange_bind(destination, source, routing_key=key)
