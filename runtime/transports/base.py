"""The one interface every broker transport implements, and the delivery it hands out.

The worker sees brokers only through :class:`Transport`; a transport never imports the worker.
Flow control is the transport's job: ``consume`` is given a :class:`Capacity` and must never
hold more unacknowledged deliveries that have not been handed to a slot than the capacity has
free slots (prefetch 1 per slot).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

from protocol import WireMessage

#: The log context the worker binds while it handles one message (structlog's contextvars).
_PER_TASK_KEYS = ("task_id", "task", "queue")

__all__ = [
    "Broadcasting",
    "BrokerHealth",
    "Capacity",
    "Delivery",
    "Mirroring",
    "QueueSpec",
    "Recovering",
    "Transport",
    "detached_context",
    "transport_options",
    "wait_free_unless_closed",
]


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue as Celery declares it: a durable queue bound to a direct exchange of its name.

    ``max_priority`` adds ``x-max-priority`` (Celery's ``task_queue_max_priority``);
    ``quorum`` declares ``x-queue-type: quorum``.
    """

    name: str
    max_priority: int | None = None
    quorum: bool = False

    @property
    def exchange(self) -> str:
        """The exchange Celery creates for the queue: same name, type direct."""
        return self.name

    @property
    def routing_key(self) -> str:
        """The binding key: the queue name."""
        return self.name


@dataclass(slots=True)
class Delivery:
    """One message handed to the worker, with what the transport needs to settle it.

    ``handle`` is the transport's own (an aio-pika message, a Redis delivery tag, an SQS
    receipt handle); only the transport that produced the delivery may settle it.
    """

    message: WireMessage
    queue: str
    exchange: str
    routing_key: str
    redelivered: bool
    handle: Any = field(repr=False)

    def settled(self) -> Delivery:
        """This delivery once its message is acknowledged: where it came from, without the
        message or the handle, which nothing needs any longer. A run that waits for minutes
        after an early ack then keeps neither (on RabbitMQ the header table, properties and
        body, about 2 KB a run).

        Deliveries from the same place are one object, shared (nothing changes a delivery):
        10,000 runs waiting on one queue keep one, not 10,000 (80 bytes each).
        """
        where = (self.queue, self.exchange, self.routing_key, self.redelivered)
        found = _SETTLED_FROM.get(where)
        if found is None:
            found = Delivery(_SETTLED, *where, handle=None)
            if len(_SETTLED_FROM) < _SETTLED_FROM_MAX:
                _SETTLED_FROM[where] = found
        return found


#: What a settled delivery holds instead of its message.
_SETTLED = WireMessage(b"", None, None)
#: The settled deliveries made so far, by where they came from; bounded, as queues and
#: routing keys can be many.
_SETTLED_FROM: dict[tuple[str, str, str, bool], Delivery] = {}
_SETTLED_FROM_MAX = 4096


class Capacity(Protocol):
    """What the worker tells a transport about its slots (:class:`runtime.worker.slots.Slots`)."""

    @property
    def free(self) -> int:
        """Slots not taken by a task."""

    async def wait_free(self) -> None:
        """Return once ``free`` is at least 1."""

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` whenever ``free`` changes; returns an unsubscribe function."""


class Transport(Protocol):
    """A broker connection: declare, consume with a capacity, settle, publish, inspect, close."""

    #: Whether the broker answers now, and how often the connection came back.
    health: BrokerHealth

    async def connect(self) -> None:
        """Open the connection; raise ``BrokerConnectionError`` at once if the broker is down."""

    async def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Declare the queues (and their exchanges and bindings) exactly as Celery does."""

    def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        """Yield deliveries from ``queues``, never more unsettled ones than ``capacity.free``."""

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge: the broker forgets the message."""

    async def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Reject: requeue it for another consumer, or drop it."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<queue>.dead`` with ``reason`` in its headers, then settle it."""

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        """Give the message to the broker to deliver again at ``eta``, then settle it.

        It comes back unchanged (its ``eta`` header too) no later than ``eta`` and at most
        about a second before it, so the worker holds it only briefly; meanwhile it is
        neither held by this worker nor counted against its prefetch, and it survives a
        restart of the worker.
        """

    async def publish(self, message: WireMessage, *, routing_key: str, exchange: str = "") -> None:
        """Publish a message (to the default exchange: ``routing_key`` is the queue name)."""

    async def queue_depth(self, queue: str) -> tuple[int, int | None]:
        """``(messages ready, consumers)`` of ``queue``; consumers is ``None`` where the
        broker cannot tell (SQS)."""

    async def aclose(self) -> None:
        """Stop consuming and close; unsettled deliveries go back to the broker."""


@runtime_checkable
class SendsLater(Protocol):
    """A transport that can publish a message to arrive later (RabbitMQ's delayed delivery):
    what a worker hands a long ``acks_late`` run's message to before the broker's
    ``consumer_timeout`` takes it back (:mod:`runtime.worker.leases`)."""

    async def send_later(self, message: WireMessage, queue: str, seconds: int) -> None:
        """Publish ``message`` to ``queue`` to arrive ``seconds`` from now, confirmed."""


@runtime_checkable
class Broadcasting(Protocol):
    """What a transport with fanout adds for remote control (AMQP, Redis, memory; SQS has none).

    Broadcasts are fire-and-forget: nothing is acknowledged, and what arrives while nobody
    listens is lost, as with kombu's mailboxes.
    """

    async def broadcasts(self, exchange: str, queue: str) -> AsyncGenerator[WireMessage, None]:
        """Start listening to fanout ``exchange``; iterate the result to receive.

        ``queue`` is this node's own queue where the broker needs one (AMQP: declared as
        Celery declares ``<nodename>.celery.pidbox``). Raises ``BrokerConnectionError`` if the
        broker refuses, e.g. because another node of the same name holds the queue. Ending
        the iteration stops listening.
        """

    async def broadcast(self, message: WireMessage, *, exchange: str) -> None:
        """Publish ``message`` to every listener of fanout ``exchange``."""

    async def reply(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Publish to direct ``exchange`` (non-durable, as kombu's reply exchanges) with
        ``routing_key``; a reply whose queue has gone (its sender stopped waiting) is dropped."""

    async def emit(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Publish to topic ``exchange`` with ``routing_key``, as kombu publishes Celery's
        events (``celeryev``: a durable topic exchange on AMQP, a PUBLISH channel per routing
        key on Redis); what arrives while no monitor listens is dropped."""


@dataclass(slots=True)
class BrokerHealth:
    """Whether a transport's connection to its broker works now, and how often it came back:
    what a worker's ``/readyz`` and its reconnect count read. Each transport keeps one as
    ``health``, marking it :meth:`up` when a broker call succeeds after a failure and
    :meth:`down` when one fails for want of the broker."""

    connected: bool = False
    reconnects: int = 0
    _seen: bool = field(default=False, repr=False)

    def up(self) -> None:
        """The broker answers (again: a reconnect is counted)."""
        if not self.connected:
            if self._seen:
                self.reconnects += 1
            self.connected = self._seen = True

    def down(self) -> None:
        """The broker does not answer."""
        self.connected = False


@runtime_checkable
class Recovering(Protocol):
    """What a transport adds when another process can give a dead consumer's deliveries back
    before the broker would (Redis: before the visibility timeout). AMQP needs none: the
    broker requeues what a closed connection held at once.
    """

    def delivery_ref(self, delivery: Delivery) -> str | None:
        """A name for ``delivery`` that outlives this process (the Redis delivery tag)."""

    async def restore_now(self, ref: str) -> bool:
        """Put the delivery ``ref`` names back on its queue now, marked redelivered, if it is
        still unsettled; ``False`` if it was settled or restored already."""


@runtime_checkable
class Mirroring(Protocol):
    """What a transport adds to copy task messages to a monitor queue (:mod:`runtime.monitor`):
    AMQP, Redis, SQS and memory all have it."""

    async def mirror(
        self, message: WireMessage, *, exchange: str, routing_key: str, queue: QueueSpec
    ) -> None:
        """Publish ``message`` to durable topic ``exchange`` with ``routing_key``, ``queue``
        bound to it with ``#`` (both declared on first use), as kombu routes a topic exchange:
        every queue whose binding matches gets it. SQS, whose exchanges live only in a
        producer's memory, sends it to ``queue`` itself."""


async def wait_free_unless_closed(capacity: Capacity, closed: asyncio.Event) -> bool:
    """Wait for a free slot: ``True`` once there is one, ``False`` if ``closed`` is set first.

    A consumer whose slots are all taken must still notice ``aclose()``: the worker may close a
    transport while an iteration waits here, and the iteration must then end.
    """
    # A loop, not one wait: a slot freed while this task was waking up may be taken first by
    # another of the worker's tasks (a task held for its ETA taking its slot back).
    while not closed.is_set():
        if capacity.free > 0:
            return True
        free = asyncio.ensure_future(capacity.wait_free())
        closing = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait((free, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            free.cancel()
            closing.cancel()
    return False


def transport_options(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` updated with the URL's query string (values stay strings there)."""
    return {**(options or {}), **dict(parse_qsl(urlsplit(url).query))}


def detached_context() -> contextvars.Context:
    """A copy of the current context without the per-message log keys: for a background task
    that one message's handling happens to start (a batch of acks serves every message), so
    that its log lines name the worker but no message."""
    import structlog  # noqa: PLC0415 - only when such a task starts

    context = contextvars.copy_context()
    context.run(structlog.contextvars.unbind_contextvars, *_PER_TASK_KEYS)
    return context
