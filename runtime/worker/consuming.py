"""The queues a worker consumes, changed while it runs (``add_consumer``, ``cancel_consumer``).

A transport consumes through one ``Transport.consume(queues, capacity)`` iteration at a time.
:class:`Consumers` runs that iteration in a task of its own and, when the queue set changes,
cancels it and starts one over the new set once the old one has ended. Nothing is lost in
between, because each transport gives back, as its iteration ends, what it fetched and has not
handed out: AMQP rejects (requeue) what its buffer holds and the message waiting for a slot,
and cancels its consumers; Redis pushes its claimed batch back to the consuming end of its
lists, once a claim in flight has landed; memory takes a message off its queue only as it hands
it out; SQS makes what it received and did not hand out visible again. Deliveries already
handed out stay the worker's and are settled as usual: the transport and its connection stay
open. With no queue left the worker consumes nothing until one is added.

Queues are added as the worker declares its own (:meth:`App.queue_spec`: a durable queue bound
to the direct exchange of its name with its name as routing key); a request for another
exchange, exchange type or routing key is refused rather than half honoured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from runtime.transports.base import Capacity, Delivery, QueueSpec, Transport

__all__ = ["Consumers"]


class Consumers:
    """The worker's queue set and the one iteration consuming it; see the module docstring.

    :attr:`queues` is the live list (``inspect active_queues`` and the worker read it).
    """

    def __init__(
        self,
        transport: Transport,
        queues: Sequence[str],
        capacity: Capacity,
        spec: Callable[[str], QueueSpec],
        *,
        log: Any = None,
    ) -> None:
        self.transport = transport
        self.log = log or structlog.get_logger("celeriac.worker")
        self.queues = list(dict.fromkeys(queues))
        self.capacity = capacity
        self._spec = spec
        self._changed = asyncio.Event()

    async def run(self, accept: Callable[[Delivery], None]) -> None:
        """Hand every delivery to ``accept`` (which must not await: the transport counts on
        its slot being taken before it next runs), over the current queue set, until the
        transport's iteration ends by itself (it is closing) or fails; cancelling this ends
        the iteration, which gives back what it fetched and did not hand out."""
        while True:
            self._changed.clear()
            if not self.queues:
                await self._changed.wait()
                continue
            iteration = asyncio.create_task(
                self._iterate(list(self.queues), accept), name="celeriac-consume-queues"
            )
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait((iteration, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                if not iteration.done():
                    iteration.cancel()
                    await asyncio.wait((iteration,))  # its clean-up gives back what it held
            if not self._changed.is_set():
                iteration.result()  # its error, if any
                return  # it ended by itself: the transport is closing
            if not iteration.cancelled() and (error := iteration.exception()) is not None:
                # Ended for the change, it failed on its way out: the next one will tell
                # whether the broker is really in trouble.
                self.log.warning("consume_restart_error", error=repr(error))

    async def _iterate(self, queues: list[str], accept: Callable[[Delivery], None]) -> None:
        deliveries = self.transport.consume(queues, self.capacity)
        try:
            async for delivery in deliveries:
                accept(delivery)
        finally:
            if (aclose := getattr(deliveries, "aclose", None)) is not None:
                await aclose()  # ends the iteration even if ``accept`` raised

    async def add(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
    ) -> bool:
        """Declare ``queue`` and consume it too; ``False`` if it is consumed already.

        Raises ``ValueError`` for an exchange, type or routing key other than the queue's own
        (see the module docstring), ``BrokerConnectionError`` if the broker refuses the queue.
        """
        wanted = {"exchange": exchange, "exchange_type": exchange_type, "routing_key": routing_key}
        own = {"exchange": queue, "exchange_type": "direct", "routing_key": queue}
        refused = {
            name: value for name, value in wanted.items() if value not in (None, "", own[name])
        }
        if refused:
            given = ", ".join(f"{name}={value!r}" for name, value in refused.items())
            raise ValueError(
                f"celeriac consumes {queue!r} only through the direct exchange {queue!r} with "
                f"routing key {queue!r}, not {given}"
            )
        if queue in self.queues:
            return False
        await self.transport.declare([self._spec(queue)])
        if queue not in self.queues:  # another add may have won while the broker answered
            self.queues.append(queue)
            self._changed.set()
        return True

    def cancel(self, queue: str) -> bool:
        """Stop consuming ``queue``; ``False`` if it was not consumed."""
        if queue not in self.queues:
            return False
        self.queues.remove(queue)
        self._changed.set()
        return True
