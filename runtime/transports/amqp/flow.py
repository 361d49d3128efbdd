"""Flow control of the consuming channel: its prefetch and consumers kept at the free slots,
and settlements written behind the lower prefetch they need.

The channel has one *global* QoS (``basic.qos global=true``: a limit shared by all its
consumers, which RabbitMQ also applies to consumers that already exist) of
``k = capacity.free + unsettled``, *unsettled* being the deliveries handed out and not yet
acked, rejected or dead-lettered. So the broker never has more deliveries out on us that no
slot holds than there are free slots:

* handing a delivery out moves it to unsettled and the worker takes a slot: ``k`` unchanged;
* settling one lowers ``k`` *before* the ack or reject goes out, or cancels every consumer
  when ``k`` would be 0 (RabbitMQ reads a prefetch of 0 as "unlimited");
* a freed slot raises ``k`` (or resumes the consumers) later, in a background task that
  coalesces bursts: raising late only delays.

Settling a delivery while its slot is still taken writes the ``basic.qos`` (or the
``basic.cancel``) in front of its ack, in the same write: RabbitMQ handles a channel's
methods in order, and nobody waits for its reply (:class:`.received.QosPipeline`).
Settlements asked for in the same turn of the event loop leave in one write. Each queue's
first ``basic.consume`` on a channel is a plain RPC, so that a missing queue fails
:meth:`FlowControl.locked_apply` at once; later ones, after a pause at ``k = 0``, are
written no-wait under the same consumer tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import aiormq.abc
from aio_pika.abc import AbstractRobustChannel

from runtime.errors import BrokerConnectionError
from runtime.running_loop import HeldLoop
from runtime.transports.base import Capacity, detached_context

from . import dispatch
from .dispatch import DirectConsumer
from .received import BROKER_ERRORS, Consumer, QosPipeline, Received, ack_together, unless_lost

__all__ = ["FlowControl", "OnMessage"]

log = logging.getLogger(__name__)

#: What a consumer calls with each message, ``(queue, message)``: at once, in the channel's
#: reader (:mod:`.dispatch`), so it must not block.
OnMessage = Callable[[str, aiormq.abc.DeliveredMessage], None]
#: A settlement to write: the message, ``None`` (ack) or reject's requeue flag, its future.
_Pending = tuple[Received, bool | None, asyncio.Future[None]]


class FlowControl:
    """The consuming channel's QoS and consumers, and the settlements of its deliveries; see
    the module docstring. :meth:`start` begins following a :class:`Capacity`, :meth:`stop`
    ends it (then the target is 0: no consumers)."""

    def __init__(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._capacity: Capacity | None = None  # set while consuming
        self._queues: list[str] = []
        self._raw: aiormq.abc.AbstractChannel | None = None  # the channel flow applies to
        self._tags: dict[str, str] = {}  # each queue's consumer tag on that channel
        self._consuming = False  # whether the consumers of _tags are started
        self._prefetch = 0
        self._pipeline: QosPipeline | None = None  # the current channel's
        #: Deliveries handed out and not settled yet.
        self.unsettled: set[Received] = set()
        self._pending: list[_Pending] = []  # settlements the flush task has not written yet
        self._flushing: asyncio.Task[None] | None = None
        self._loop = HeldLoop()  # the loop consuming runs on, from start() to stop()
        #: Held for every change of QoS or consumers, so that none is cut off mid-RPC.
        self.lock = asyncio.Lock()
        #: Set when the target may have changed: a slot freed, a channel reopened.
        self.wake = asyncio.Event()

    def start(self, capacity: Capacity, queues: list[str]) -> None:
        """Consume ``queues`` with the prefetch following ``capacity`` (from the next apply);
        call on the loop that consumes."""
        self._capacity, self._queues = capacity, queues
        self._loop.hold()

    def stop(self) -> None:
        """Consume nothing from the next apply on: the target becomes 0."""
        self._capacity = None
        self._loop.release()

    async def cancel_consumers(self) -> None:
        """After :meth:`stop`: cancel the consumers on the current channel, if it is open."""
        if (raw := self._raw) is not None and not raw.is_closed:
            await self.locked_apply(raw)

    def target(self) -> int:
        """The prefetch the channel should have: free slots plus deliveries not settled."""
        if self._capacity is None:
            return 0
        return self._capacity.free + len(self.unsettled)

    async def locked_apply(self, raw: aiormq.abc.AbstractChannel) -> None:
        """Bring QoS and consumers on ``raw`` to the target, under the lock."""
        async with self.lock:
            await self._apply(raw)

    async def _apply(self, raw: aiormq.abc.AbstractChannel) -> None:
        """Bring QoS and consumers on ``raw`` to the target; call with the lock held."""
        if raw is not self._raw:  # a new channel: the old one's consumers and deliveries died
            self._raw, self._prefetch, self._tags, self._consuming = raw, 0, {}, False
            dispatch.install(raw)
            self._pipeline = QosPipeline(raw)
            self.unsettled = {message for message in self.unsettled if not message.lost}
        assert self._pipeline is not None  # set with the channel
        target = self.target()
        if self._first_consume(target):
            if target != self._prefetch:
                await self._pipeline.write(prefetch=target)
                self._prefetch = target
            for queue in self._queues:  # a fresh tag: an old one may still be registered
                tag = self._tags[queue] = f"ctag{raw.number}.{uuid.uuid4().hex}"
                dispatch.route(raw, tag)
                await raw.basic_consume(queue, self._consumer(queue), consumer_tag=tag)
                self._consuming = True
            return
        prefetch, cancel, consume = self._changes(target)
        if prefetch is not None or cancel or consume:
            await self._pipeline.write(prefetch=prefetch, cancel=cancel, consume=consume)
            self._changed(prefetch, cancel, consume)

    def _first_consume(self, target: int) -> bool:
        """Whether reaching ``target`` starts a consumer this channel has not had yet."""
        return target > 0 and not self._consuming and any(q not in self._tags for q in self._queues)

    def _changes(self, target: int) -> tuple[int | None, list[str], list[Consumer]]:
        """What brings the channel to ``target``: the prefetch to write (``None``: as it is),
        the consumers to cancel, the consumers to start again."""
        if target <= 0:  # RabbitMQ reads a prefetch of 0 as "unlimited": stop consuming
            if not self._consuming:
                return None, [], []
            return None, [self._tags[queue] for queue in self._queues if queue in self._tags], []
        prefetch = target if target != self._prefetch else None
        if self._consuming:
            return prefetch, [], []
        consume: list[Consumer] = [
            (queue, self._tags[queue], self._consumer(queue)) for queue in self._queues
        ]
        return prefetch, [], consume

    def _consumer(self, queue: str) -> DirectConsumer:
        return DirectConsumer(partial(self._on_message, queue))

    def _changed(self, prefetch: int | None, cancel: list[str], consume: list[Consumer]) -> None:
        """Note :meth:`_changes` written: the broker applies them before any later method."""
        if prefetch is not None:
            self._prefetch = prefetch
        if cancel:
            self._consuming = False
        if consume:
            self._consuming = True

    async def regulate(
        self, channel: AbstractRobustChannel, on_new_channel: Callable[[], Awaitable[None]]
    ) -> None:
        """Follow capacity changes and channel reopens, one apply per burst, until cancelled
        (under the lock); ``on_new_channel`` runs before applying to a reopened channel.
        Nothing is applied while settlements are written: each batch applies it, so acks and
        freed slots cancel out."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self._flushing is not None:
                continue
            try:
                raw = await channel.get_underlay_channel()
                if raw.is_closed:
                    continue  # being reopened; the reopen wakes us
                if raw is not self._raw and self._raw is not None:
                    await on_new_channel()
                await self.locked_apply(raw)
                if self._pipeline is not None:  # changes meanwhile coalesce into one write
                    await self._pipeline.confirmed()
            except (BrokerConnectionError, *BROKER_ERRORS) as exc:
                log.warning("AMQP flow control will retry: %s", exc)
                await asyncio.sleep(1)
                self.wake.set()

    def settle(self, message: Received, requeue: bool | None) -> asyncio.Future[None] | None:
        """Queue an ack (``requeue=None``) or a reject; the future is done once it is written
        (cancelling it withdraws nothing: the settlement is written all the same). ``None``
        where there is nothing to do: settled already, or its channel is gone.

        Settlements asked for in one turn of the event loop go out together, behind one
        ``basic.qos`` lowering for all of them (see :meth:`_write_settlements`).
        """
        if message.lost or message.settled:
            return None
        message.settled = True
        loop = self._loop.get()
        done = loop.create_future()
        self._pending.append((message, requeue, done))
        if self._flushing is None:
            self._flushing = loop.create_task(
                self._flush(), name="celeriac-amqp-settle", context=detached_context()
            )
        return done

    async def written(self) -> None:
        """Wait until the settlements asked for so far are written (or have failed)."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush(self) -> None:
        """Write pending settlements, a batch at a time, until none is left: the first at
        once, each later one when the broker has answered the basic.qos before it."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write_settlements(batch)
                except BaseException as exc:
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    for _, _, done in batch:
                        if not done.done():
                            done.set_result(None)
                if self._pending and self._pipeline is not None:
                    # Busy: what arrives while the broker answers goes out as one batch.
                    with contextlib.suppress(*BROKER_ERRORS):
                        await self._pipeline.confirmed()
        finally:
            self._flushing = None
            self.wake.set()  # what changed meanwhile and no batch applied

    async def _write_settlements(self, batch: list[_Pending]) -> None:
        """Lower the QoS for the messages whose slots are still taken, then settle all: the
        lower QoS goes first (in the same write, :meth:`_flow_then_settle`, or confirmed
        before), else the broker would send more than there are free slots."""
        live = [item for item in batch if not item[0].lost]
        held = [message for message, _, _ in live if message in self.unsettled]
        try:
            if held:
                self.unsettled.difference_update(held)
                async with self.lock:
                    if await self._flow_then_settle(live):
                        return
                    await unless_lost(held[0], self._apply(held[0].channel))
            acks = [message for message, requeue, _ in live if requeue is None]
            if acks:
                await unless_lost(acks[0], ack_together(acks))
            for message, requeue, _ in live:
                if requeue is not None:
                    await unless_lost(
                        message, message.channel.basic_reject(message.tag, requeue=requeue)
                    )
        except BaseException:
            # Not settled after all: the messages still count against the prefetch.
            for message, _, _ in live:
                message.settled = False
            self.unsettled.update(message for message in held if not message.lost)
            self.wake.set()
            raise

    async def _flow_then_settle(self, live: list[_Pending]) -> bool:
        """Write what brings the channel to the target (a lower prefetch, or the consumers
        cancelled) with ``live``'s settlements behind it; ``False`` (nothing done) where they
        cannot share a write: another channel, or a first consume. Call with the lock held."""
        channel = live[0][0].channel
        target = self.target()
        if (
            channel is not self._raw
            or self._pipeline is None
            or self._first_consume(target)
            or any(message.channel is not channel for message, _, _ in live)
        ):
            return False
        prefetch, cancel, consume = self._changes(target)
        settlements = [(message, requeue) for message, requeue, _ in live]
        write = self._pipeline.write(
            prefetch=prefetch, cancel=cancel, consume=consume, settlements=settlements
        )
        await unless_lost(live[0][0], write)
        self._changed(prefetch, cancel, consume)
        return True
