"""The RabbitMQ (AMQP 0-9-1) transport, on aio-pika, with prefetch sized to the free slots.

Flow control (:mod:`.flow`) keeps the consuming channel's prefetch at the free slots, so the
broker never has more deliveries out on us that no slot holds than there are free slots.
The worker must ``take()`` its slot before it next awaits, as ``async for delivery in
transport.consume(...): slots.take()`` does.
The hot path reads aiormq's frames directly, without aio-pika's message wrapper, and
:mod:`.codec` reads their first two frames and writes every message's properties (on connect).

Quorum queues refuse global QoS (RabbitMQ closes the whole connection, 540 NOT_IMPLEMENTED),
and a per-consumer prefetch cannot follow the free slots (RabbitMQ applies a new one only to
consumers created after it, and bounds each consumer, not their sum). So queues declared with
``quorum=True`` are consumed by *fetching*: ``basic.get``, one message per free slot, round
robin over the queues, polling an empty broker every 5 ms at first and 100 ms at most. Nothing
is ever prefetched; the price is that latency of an idle worker.

After a lost connection aio-pika reconnects and reopens the channels. Deliveries of the old
channel are back in their queue and their delivery tags mean nothing on the new channel, so
settling them does nothing: the broker redelivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq import spec as amqp_spec

from protocol import (
    CeleriacError,
    MalformedMessage,
    WireMessage,
    amqp_properties,
    from_amqp,
    shared_text,
)
from protocol.delayed import delay_routing_key, strip_delay
from runtime.errors import BrokerConnectionError, translate_amqp_errors
from runtime.transports.base import (
    BrokerHealth,
    Capacity,
    Delivery,
    QueueSpec,
    wait_free_unless_closed,
)
from runtime.transports.reconnect import BackoffConnection

from . import codec, fanout, frames
from .delayed import DELAYED_DELIVERY, DelayedQueues
from .flow import FlowControl
from .monitor import AmqpMirroring
from .received import BROKER_ERRORS, Received

__all__ = ["CONNECT_TIMEOUT", "AmqpTransport", "ConnectionFactory"]

log = logging.getLogger(__name__)

#: Opens a robust connection to a URL (default: :func:`aio_pika.connect_robust`).
ConnectionFactory = Callable[[str], Awaitable[AbstractRobustConnection]]

#: Seconds one connection attempt may take.
CONNECT_TIMEOUT = 10.0

_PROPERTIES = ("correlation_id", "reply_to", "delivery_mode", "priority", "expiration")
_CLASSIC = QueueSpec("")

# How long an idle fetching consumer waits between polls: short at first, then backing off.
_FETCH_IDLE_MIN = 0.005
_FETCH_IDLE_MAX = 0.1


_Buffered = tuple[str, Received] | None


class AmqpTransport(fanout.AmqpBroadcasting, AmqpMirroring):
    """A :class:`~runtime.transports.base.Transport` for RabbitMQ; see the module docstring.
    Its :class:`~runtime.transports.base.Broadcasting` methods are in :mod:`.fanout`, its
    :class:`~runtime.transports.base.Mirroring` method in :mod:`.monitor`."""

    def __init__(self, url: str, *, connection_factory: ConnectionFactory | None = None) -> None:
        self._url = url
        self._factory = connection_factory or partial(
            aio_pika.connect_robust, timeout=CONNECT_TIMEOUT, connection_class=BackoffConnection
        )
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._consumer: AbstractRobustChannel | None = None
        self._declared: dict[str, QueueSpec] = {}
        self._exchanges: set[str] = set()  # declared for broadcasts, replies and events
        #: Whether the connection is up now, and how often aio-pika restored it.
        self.health = BrokerHealth()
        self._buffer: asyncio.Queue[_Buffered] | None = None  # set while consume() runs
        self._flow = FlowControl(self._on_message)
        self._regulator: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()  # set with _closing, for waits that must end on close
        self._delayed = DelayedQueues(DELAYED_DELIVERY)

    async def connect(self) -> None:
        """Connect, failing fast with :class:`BrokerConnectionError` naming ``host:port``.

        Once connected, aio-pika reconnects by itself, with exponential backoff and jitter
        (:mod:`runtime.transports.reconnect`), and reopens the channels.
        """
        codec.install()
        frames.install()
        split = urlsplit(self._url)
        port = split.port or (5671 if split.scheme == "amqps" else 5672)
        with translate_amqp_errors(f"connect to {split.hostname or 'localhost'}:{port}"):
            self._connection = await self._factory(self._url)
            self._publisher = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        health = self.health
        health.up()
        self._connection.close_callbacks.add(lambda *_: health.down())
        self._connection.reconnect_callbacks.add(lambda *_: health.up())

    async def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Declare each queue exactly as Celery does, and its ``<name>.dead`` queue.

        A durable direct exchange named like the queue; a durable queue with arguments ``{}``
        (plus ``x-max-priority`` / ``x-queue-type: quorum`` as the spec says) bound to it
        with the queue name as key; ``<name>.dead`` is a plain durable queue.
        """
        for spec in queues:
            arguments: dict[str, Any] = {}
            if spec.max_priority is not None:
                arguments["x-max-priority"] = spec.max_priority
            if spec.quorum:
                arguments["x-queue-type"] = "quorum"
            # A refused declare (406) closes its channel: use a throwaway one.
            with translate_amqp_errors(f"declare queue {spec.name!r}"):
                async with aio_pika.Channel(self._require(), publisher_confirms=False) as ch:
                    exchange = await ch.declare_exchange(
                        spec.exchange, aio_pika.ExchangeType.DIRECT, durable=True
                    )
                    queue = await ch.declare_queue(spec.name, durable=True, arguments=arguments)
                    await queue.bind(exchange, routing_key=spec.routing_key)
                    await ch.declare_queue(f"{spec.name}.dead", durable=True)
            self._declared[spec.name] = spec

    async def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        """Yield deliveries from ``queues`` with the prefetch sized to ``capacity``.

        Ending the iteration cancels the consumers and requeues what arrived but was not
        handed out; deliveries handed out can still be settled until :meth:`aclose`.
        """
        if self._buffer is not None:
            raise RuntimeError("this transport is already consuming")
        channel = await self._consuming_channel()
        if any(self._declared.get(name, _CLASSIC).quorum for name in queues):
            async for delivery in self._fetch(channel, list(queues), capacity):
                yield delivery
            return
        flow = self._flow
        flow.start(capacity, list(queues))
        buffer = self._buffer = asyncio.Queue()
        unsubscribe = capacity.on_change(flow.wake.set)
        waiting: _Buffered = None  # taken from the buffer, waiting for a free slot
        try:
            with translate_amqp_errors(f"consume from {', '.join(queues)}"):
                # Shielded: aiormq closes a channel whose RPC is cancelled (a consumer set
                # changing at run time); the clean-up below waits for it under flow's lock.
                await asyncio.shield(flow.locked_apply(await channel.get_underlay_channel()))
            self._regulator = asyncio.create_task(flow.regulate(channel, self._redeclare))
            while (item := await buffer.get()) is not None:
                queue, message = item
                if message.lost:
                    continue  # its channel died: the broker redelivers it
                handed = await self._delivery(queue, message)
                if handed is None:
                    continue
                waiting = item
                if not await wait_free_unless_closed(capacity, self._closed):
                    return  # closing: the connection's close gives the message back
                waiting = None
                flow.unsettled.add(message)
                yield handed
        finally:
            self._buffer = None
            flow.stop()
            unsubscribe()
            await self._stop_regulator()
            if not self._closing:  # else closing the connection returns everything
                with contextlib.suppress(*BROKER_ERRORS):
                    await flow.cancel_consumers()
                    # What waited for a slot when the iteration ended (cancelled), then the rest.
                    while waiting is not None or not buffer.empty():
                        left, waiting = waiting or buffer.get_nowait(), None
                        if left is not None:
                            await left[1].channel.basic_reject(left[1].tag, requeue=True)

    async def _consuming_channel(self) -> AbstractRobustChannel:
        if self._consumer is None:
            with translate_amqp_errors("open a channel"):
                self._consumer = await self._require().channel(publisher_confirms=False)
            self._consumer.reopen_callbacks.add(lambda _channel: self._flow.wake.set())
        return self._consumer

    async def _delivery(self, queue: str, message: Received) -> Delivery | None:
        """The delivery for ``message``; ``None`` if it was unreadable (and dead-lettered)."""
        delivered = message.take()
        header = delivered.header.properties
        properties = {name: getattr(header, name) for name in _PROPERTIES}
        try:
            if isinstance(header.headers, codec.UnreadableTable):
                raise MalformedMessage(header.headers.reason, field="headers")
            wire = from_amqp(
                delivered.body,
                content_type=header.content_type,
                content_encoding=header.content_encoding,
                headers=header.headers,
                properties=properties,
                headers_nest_within=(
                    codec.MAX_NESTING if type(header.headers) is codec.ReadTable else None
                ),
            )
        except CeleriacError as exc:
            await self._drop_unreadable(queue, message, delivered, properties, exc)
            return None
        return Delivery(
            message=wire,
            queue=queue,
            exchange=shared_text(delivered.exchange) if delivered.exchange else "",
            routing_key=shared_text(strip_delay(delivered.routing_key or "")),
            redelivered=bool(delivered.redelivered),
            handle=message,
        )

    async def _fetch(
        self, channel: AbstractRobustChannel, queues: list[str], capacity: Capacity
    ) -> AsyncIterator[Delivery]:
        """Yield deliveries got with ``basic.get``, only ever into a free slot."""
        idle, turn = _FETCH_IDLE_MIN, 0
        while await wait_free_unless_closed(capacity, self._closed):
            fetched = None
            try:
                with translate_amqp_errors(f"fetch from {', '.join(queues)}"):
                    raw = await channel.get_underlay_channel()
                    for offset in range(len(queues)):
                        name = queues[(turn + offset) % len(queues)]
                        got = await raw.basic_get(name, no_ack=False)
                        if isinstance(got.delivery, amqp_spec.Basic.GetOk):
                            fetched, turn = (name, got), (turn + offset + 1) % len(queues)
                            break
            except BrokerConnectionError as exc:
                # The connection or channel is being restored: wait, as the push path does.
                log.warning("AMQP fetch will retry: %s", exc)
                await asyncio.sleep(1)
                continue
            if fetched is None:
                await asyncio.sleep(idle)
                idle = min(idle * 2, _FETCH_IDLE_MAX)
                continue
            idle = _FETCH_IDLE_MIN
            name, got = fetched
            delivery = await self._delivery(name, Received(got))
            if delivery is not None:
                yield delivery

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge: the broker forgets the message. Does nothing if its channel is gone."""
        await self._settle(delivery, None)

    async def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Requeue the message or drop it. Does nothing if its channel is gone."""
        await self._settle(delivery, requeue)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy the message to ``<queue>.dead``, confirmed by the broker, then ack it.

        The copy gets headers ``x-celeriac-reason`` and ``x-celeriac-queue`` and loses its
        ``expiration``, as in RabbitMQ's own dead-lettering, so that it does not expire. If
        the copy is not confirmed the message is requeued and :class:`BrokerConnectionError`
        raised: nothing is lost.
        """
        try:
            await self._publish_dead(delivery.message, delivery.queue, reason)
        except BrokerConnectionError:
            await self.reject(delivery, requeue=True)
            raise
        await self.ack(delivery)

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        """Send a copy through RabbitMQ's native delayed delivery, confirmed, then ack this one.

        The layout is Celery 5.5's (:mod:`protocol.delayed`, declared on first use) under
        celeriac's own names (``celeriac_celery_delayed_<level>``), so the copy waits in
        durable queues and comes back whole seconds later: at most a second early, never
        late. The copy loses its ``expiration`` as a dead letter does (the ``expires`` header
        still holds). A crash between the confirm and the ack leaves both: at least once.
        The levels are classic queues, not Celery's quorum ones (:mod:`.delayed` says why).
        """
        seconds = max(1, math.floor((eta - datetime.now(UTC)).total_seconds()))
        await self.send_later(delivery.message, delivery.queue, seconds)
        await self.ack(delivery)

    async def send_later(self, message: WireMessage, queue: str, seconds: int) -> None:
        """Publish to ``queue`` by :meth:`defer`'s delays, due in ``seconds`` (>= 1), confirmed."""
        await self._delayed.prepare(self._require(), queue)
        properties = _outgoing(message)
        properties.expiration = None
        seconds = max(1, seconds)
        key = delay_routing_key(seconds, queue)
        first_stop = self._delayed.layout.first_stop(seconds)
        await self._send(message.body, properties, first_stop, key, mandatory=True)

    async def publish(self, message: WireMessage, *, routing_key: str, exchange: str = "") -> None:
        """Publish and wait for the broker's confirm (``exchange=""``: to queue ``routing_key``)."""
        await self._send_wire(message, exchange, routing_key)

    async def _send_wire(self, message: WireMessage, exchange: str, routing_key: str) -> None:
        await self._send(message.body, _outgoing(message), exchange, routing_key)

    async def queue_depth(self, queue: str) -> tuple[int, int]:
        """``(messages ready, consumers)`` of ``queue``, from a passive declare."""
        # A passive declare of a missing queue closes its channel: use a throwaway one.
        with translate_amqp_errors(f"inspect queue {queue!r}"):
            async with aio_pika.Channel(self._require(), publisher_confirms=False) as channel:
                raw = await channel.get_underlay_channel()
                ok = await raw.queue_declare(queue, passive=True)
        return ok.message_count or 0, ok.consumer_count or 0

    async def aclose(self) -> None:
        """Stop consuming and close; unsettled deliveries go back to their queues."""
        self._closing = True
        self._closed.set()
        if self._buffer is not None:
            self._buffer.put_nowait(None)  # ends an iteration suspended in another task
        await self._flow.written()  # settlements already asked for still go out
        await self._stop_regulator()
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    def _require(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("AmqpTransport.connect() has not been called")
        return self._connection

    async def _redeclare(self) -> None:
        """Declare every queue again: the channel reopened, maybe on a fresh broker node."""
        await self.declare(list(self._declared.values()))

    async def _stop_regulator(self) -> None:
        if (regulator := self._regulator) is not None:
            self._regulator = None
            async with self._flow.lock:  # never mid-RPC: aiormq closes a channel on that
                regulator.cancel()
            await asyncio.gather(regulator, return_exceptions=True)

    def _on_message(self, queue: str, delivered: aiormq.abc.DeliveredMessage) -> None:
        """Take a delivery, in the channel's reader (:mod:`.dispatch`)."""
        message = Received(delivered)
        if self._buffer is not None:
            self._buffer.put_nowait((queue, message))
        elif not self._closing:  # arrived while consume() was ending
            message.channel.create_task(_give_back(message))

    async def _settle(self, delivery: Delivery, requeue: bool | None) -> None:
        """Ack (``requeue=None``) or reject, and wait until it is written (:mod:`.flow`)."""
        done = self._flow.settle(delivery.handle, requeue)
        if done is None:
            return
        action = "ack" if requeue is None else "reject"
        with translate_amqp_errors(f"{action} a message from {delivery.queue!r}"):
            # Not shielded: cancelling the caller cancels only this future. The settlement
            # stays queued and is written whatever becomes of its future (a shield cost 1.7 us).
            await done

    async def _drop_unreadable(
        self,
        queue: str,
        message: Received,
        delivered: aiormq.abc.DeliveredMessage,
        properties: dict[str, Any],
        exc: CeleriacError,
    ) -> None:
        """Dead-letter a message ``from_amqp`` refused; it never reached a slot, QoS stays."""
        log.error("dead-lettering an unreadable message from %r: %s", queue, exc)
        header = delivered.header.properties
        kept = {name: value for name, value in properties.items() if value is not None}
        wire = WireMessage(
            delivered.body,
            header.content_type,
            header.content_encoding,
            header.headers or {},
            kept,
        )
        try:
            await self._publish_dead(wire, queue, f"unreadable: {exc}")
            await message.channel.basic_ack(message.tag)
        except (BrokerConnectionError, *BROKER_ERRORS) as failed:
            # Celery rejects an unknown format too; requeueing would redeliver it forever.
            log.error("dropping an unreadable message from %r: %s", queue, failed)
            with contextlib.suppress(*BROKER_ERRORS):
                await message.channel.basic_reject(message.tag, requeue=False)

    async def _publish_dead(self, message: WireMessage, queue: str, reason: str) -> None:
        properties = _outgoing(message)
        properties.expiration = None
        properties.headers = {
            **message.headers,
            "x-celeriac-reason": reason,
            "x-celeriac-queue": queue,
        }
        await self._send(message.body, properties, "", f"{queue}.dead", mandatory=True)

    async def _send(
        self,
        body: bytes,
        properties: amqp_spec.Basic.Properties,
        exchange: str,
        routing_key: str,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish on the confirming channel's aiormq channel, as aio-pika's ``publish`` does
        without building its ``Message`` first (17 us a Celery message, ``timeit``)."""
        if self._publisher is None:
            raise RuntimeError("AmqpTransport.connect() has not been called")
        with translate_amqp_errors(f"publish to {exchange!r} with key {routing_key!r}"):
            if self._publisher.is_closed:  # reconnecting: fail now, as aio-pika's publish does
                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
            channel = await self._publisher.get_underlay_channel()
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
            )


async def _give_back(message: Received) -> None:
    """Requeue a delivery nobody takes any more (unless its channel is gone: then the broker
    has it back already)."""
    with contextlib.suppress(*BROKER_ERRORS):
        await message.channel.basic_reject(message.tag, requeue=True)


def _outgoing(message: WireMessage) -> amqp_spec.Basic.Properties:
    """``message``'s AMQP properties as aio-pika's ``Message`` writes them (delivery mode 1
    and priority 0 unless set), the expiration as kombu's milliseconds."""
    properties = amqp_properties(message)
    if "expiration" in properties:
        properties["expiration"] = str(int(message.properties["expiration"]))
    for name in ("correlation_id", "reply_to"):  # aio-pika turns any value into text
        if name in properties and not isinstance(properties[name], str):
            properties[name] = str(properties[name])
    properties.setdefault("delivery_mode", 1)
    properties.setdefault("priority", 0)
    return amqp_spec.Basic.Properties(**properties)
