"""Monitor-queue mirroring on RabbitMQ: copies of task messages through a topic exchange.

The monitor queue is bound to a durable topic exchange with ``#`` (as the Cadasta worker
toolbox binds its ``platform.fifo``), and each copy is published to that exchange with the
task's routing key, under publisher confirms as every other publish. Both are declared once
per transport, on a throwaway channel: a refusal (an exchange of that name but another type, a
queue declared with other arguments) closes only that channel.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from protocol import WireMessage
from runtime.errors import translate_amqp_errors
from runtime.transports.base import QueueSpec

__all__ = ["MONITOR_BINDING_KEY", "AmqpMirroring", "declare_monitor"]

#: What the monitor queue is bound with: every routing key.
MONITOR_BINDING_KEY = "#"


class AmqpMirroring:
    """The :class:`~runtime.transports.base.Mirroring` method of the RabbitMQ transport.

    A mixin: the transport provides its connection (``_require``) and the publish of a
    message (``_send_wire``); what was declared is remembered in ``_monitors``.
    """

    _monitors: set[tuple[str, str]]

    def _require(self) -> AbstractRobustConnection:
        raise NotImplementedError

    async def _send_wire(self, message: WireMessage, exchange: str, routing_key: str) -> None:
        raise NotImplementedError

    async def mirror(
        self, message: WireMessage, *, exchange: str, routing_key: str, queue: QueueSpec
    ) -> None:
        """Publish ``message`` to topic ``exchange`` with ``routing_key``, after declaring the
        exchange and ``queue`` bound to it with ``#`` (once per transport)."""
        declared = getattr(self, "_monitors", None)
        if declared is None:
            declared = self._monitors = set()
        if (exchange, queue.name) not in declared:
            await declare_monitor(self._require(), exchange, queue)
            declared.add((exchange, queue.name))
        await self._send_wire(message, exchange, routing_key)


async def declare_monitor(
    connection: AbstractRobustConnection, exchange: str, queue: QueueSpec
) -> None:
    """Declare durable topic ``exchange`` and durable ``queue`` (its arguments as the app
    declares any queue) bound to it with ``#``."""
    arguments: dict[str, Any] = {}
    if queue.max_priority is not None:
        arguments["x-max-priority"] = queue.max_priority
    if queue.quorum:
        arguments["x-queue-type"] = "quorum"
    with translate_amqp_errors(f"declare monitor queue {queue.name!r} on {exchange!r}"):
        async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
            topic = await channel.declare_exchange(
                exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            declared = await channel.declare_queue(queue.name, durable=True, arguments=arguments)
            await declared.bind(topic, routing_key=MONITOR_BINDING_KEY)
