"""``memory://``: an in-process broker with the transport interface and its semantics.

For applications that embed celeriac and want to test their own tasks with a real worker loop
and no broker. Transports opened on the same URL in one process share one broker, as kombu's
memory transport does; each URL (``memory://``, ``memory://tests-a``) is a separate broker.

Semantics follow RabbitMQ's where it matters to a worker: a delivery is unsettled until acked,
rejected or dead-lettered; a requeued or abandoned delivery goes back to the head of its queue
marked redelivered; a consumer is handed a message only when its capacity has a free slot.

Remote control works too: a broadcast reaches every listener of its exchange on the broker.
There are no bindings, so a reply goes to the queue named ``<routing_key>.<exchange>``: the
name kombu's mailbox gives the reply queue it binds with that key.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from protocol import WireMessage

from .base import BrokerHealth, Capacity, Delivery, QueueSpec, wait_free_unless_closed

__all__ = ["MemoryBroker", "MemoryTransport"]


@dataclass(slots=True)
class _Queued:
    message: WireMessage
    redelivered: bool = False


@dataclass(slots=True)
class _Queue:
    messages: deque[_Queued] = field(default_factory=deque)
    consumers: int = 0


class MemoryBroker:
    """The state every transport on one ``memory://`` URL shares: queues and their messages."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.arrived = asyncio.Condition()
        self.delayed: set[asyncio.Task[None]] = set()  # messages waiting for their ETA
        #: The inboxes listening to each fanout exchange.
        self.listeners: dict[str, set[asyncio.Queue[WireMessage | None]]] = {}

    def queue(self, name: str) -> _Queue:
        """The queue ``name``, created on first use (as Celery's clients declare on publish)."""
        return self.queues.setdefault(name, _Queue())

    async def put(self, name: str, item: _Queued, *, front: bool = False) -> None:
        """Add ``item`` to the back of queue ``name`` (the front, for a redelivery)."""
        messages = self.queue(name).messages
        messages.appendleft(item) if front else messages.append(item)
        async with self.arrived:
            self.arrived.notify_all()


_brokers: dict[str, MemoryBroker] = {}


def broker_for(url: str) -> MemoryBroker:
    """The broker behind ``url``; one per URL per process."""
    return _brokers.setdefault(url, MemoryBroker())


@dataclass(slots=True)
class _Handle:
    queue: str
    item: _Queued
    settled: bool = False


class MemoryTransport:
    """A :class:`~runtime.transports.base.Transport` on a :class:`MemoryBroker`."""

    def __init__(self, url: str = "memory://", *, broker: MemoryBroker | None = None) -> None:
        self.broker = broker or broker_for(url)
        self._unsettled: dict[int, _Handle] = {}
        self._tags = itertools.count()
        self._closed = asyncio.Event()
        #: Always up once connected: the broker is in this process.
        self.health = BrokerHealth()
        self._inboxes: set[asyncio.Queue[WireMessage | None]] = set()

    async def connect(self) -> None:
        """Nothing to connect to."""
        self.health.up()

    async def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Create the queues and their ``.dead`` queues."""
        for spec in queues:
            self.broker.queue(spec.name)
            self.broker.queue(f"{spec.name}.dead")

    async def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        """Hand out messages round robin over ``queues``, one per free slot."""
        for name in queues:
            self.broker.queue(name).consumers += 1
        turn = 0
        try:
            while await wait_free_unless_closed(capacity, self._closed):
                async with self.broker.arrived:
                    found = self._next(queues, turn)
                    while found is None:
                        await self.broker.arrived.wait()  # aclose() notifies too
                        if self._closed.is_set():
                            return
                        found = self._next(queues, turn)
                name, item, turn = found
                handle = _Handle(name, item)
                self._unsettled[id(handle)] = handle
                yield Delivery(
                    message=item.message,
                    queue=name,
                    exchange="",
                    routing_key=name,
                    redelivered=item.redelivered,
                    handle=handle,
                )
        finally:
            for name in queues:
                self.broker.queue(name).consumers -= 1

    def _next(self, queues: Sequence[str], turn: int) -> tuple[str, _Queued, int] | None:
        for offset in range(len(queues)):
            name = queues[(turn + offset) % len(queues)]
            messages = self.broker.queue(name).messages
            if messages:
                return name, messages.popleft(), (turn + offset + 1) % len(queues)
        return None

    def _settle(self, delivery: Delivery) -> _Handle | None:
        handle: _Handle = delivery.handle
        if handle.settled:
            return None
        handle.settled = True
        self._unsettled.pop(id(handle), None)
        return handle

    async def ack(self, delivery: Delivery) -> None:
        """Forget the message."""
        self._settle(delivery)

    async def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Requeue the message at the head of its queue, marked redelivered, or drop it."""
        handle = self._settle(delivery)
        if handle is not None and requeue:
            await self.broker.put(handle.queue, _Queued(handle.item.message, True), front=True)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<queue>.dead`` with the reason in its headers."""
        handle = self._settle(delivery)
        if handle is None:
            return
        message = handle.item.message
        headers = {**message.headers, "x-celeriac-reason": reason, "x-celeriac-queue": handle.queue}
        dead = WireMessage(
            message.body, message.content_type, message.content_encoding, headers,
            message.properties,
        )  # fmt: skip
        await self.broker.put(f"{handle.queue}.dead", _Queued(dead))

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        """Keep the message in the broker (not in this transport) and queue it again at
        ``eta``, at the head of its queue: it is due."""
        handle = self._settle(delivery)
        if handle is None:
            return
        delay = (eta - datetime.now(UTC)).total_seconds()

        async def requeue_when_due() -> None:
            await asyncio.sleep(delay)
            await self.broker.put(handle.queue, _Queued(handle.item.message), front=True)

        waiting = asyncio.get_running_loop().create_task(requeue_when_due())
        self.broker.delayed.add(waiting)
        waiting.add_done_callback(self.broker.delayed.discard)

    async def publish(self, message: WireMessage, *, routing_key: str, exchange: str = "") -> None:
        """Append to queue ``routing_key`` (the default exchange's routing)."""
        await self.broker.put(routing_key, _Queued(message))

    async def mirror(
        self, message: WireMessage, *, exchange: str, routing_key: str, queue: QueueSpec
    ) -> None:
        """Append to monitor ``queue`` (this broker has no exchanges to route through)."""
        await self.broker.put(queue.name, _Queued(message))

    async def broadcasts(self, exchange: str, queue: str) -> AsyncGenerator[WireMessage, None]:
        """Listen to ``exchange`` (``queue`` is not needed here)."""
        inbox: asyncio.Queue[WireMessage | None] = asyncio.Queue()
        self.broker.listeners.setdefault(exchange, set()).add(inbox)
        self._inboxes.add(inbox)
        return self._listen(exchange, inbox)

    async def _listen(
        self, exchange: str, inbox: asyncio.Queue[WireMessage | None]
    ) -> AsyncGenerator[WireMessage, None]:
        try:
            while (message := await inbox.get()) is not None:
                yield message
        finally:
            self.broker.listeners[exchange].discard(inbox)
            self._inboxes.discard(inbox)

    async def broadcast(self, message: WireMessage, *, exchange: str) -> None:
        """Hand ``message`` to every listener of ``exchange``."""
        for inbox in self.broker.listeners.get(exchange, ()):
            inbox.put_nowait(message)

    async def emit(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Hand ``message`` to every listener of ``exchange``, whatever ``routing_key``."""
        await self.broadcast(message, exchange=exchange)

    async def reply(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Append to queue ``<routing_key>.<exchange>`` (see the module docstring)."""
        await self.broker.put(f"{routing_key}.{exchange}", _Queued(message))

    async def queue_depth(self, queue: str) -> tuple[int, int]:
        """``(messages ready, consumers)``."""
        found = self.broker.queue(queue)
        return len(found.messages), found.consumers

    async def aclose(self) -> None:
        """End any consuming iteration; give every unsettled delivery back to its queue, as a
        closed connection does."""
        self._closed.set()
        for inbox in self._inboxes:
            inbox.put_nowait(None)  # ends the listening iterations
        async with self.broker.arrived:
            self.broker.arrived.notify_all()
        for handle in list(self._unsettled.values()):
            handle.settled = True
            await self.broker.put(handle.queue, _Queued(handle.item.message, True), front=True)
        self._unsettled.clear()
