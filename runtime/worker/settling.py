"""Settling a message with its broker: ack, reject, dead-letter, and what each case calls for.

Every message the worker takes is settled once: through :class:`Settler`, which marks its
:class:`~runtime.worker.slots.Handling` settled so an unexpected error afterwards does not
settle it twice, or acknowledged when a long ``acks_late`` run hands it over to its lease
(:mod:`runtime.worker.leases`). After an ``acks_late`` run, Celery 5.7's rules decide between
ack, reject and requeue (:meth:`Settler.after_late_run`).
"""

from __future__ import annotations

import contextlib

from protocol import State, TaskMessage
from runtime.task import TaskOptions
from runtime.transports.base import Transport

from .leases import without_lease
from .observers import TaskObserver
from .outcome import Outcome
from .slots import Handling

__all__ = ["Settler"]


class Settler:
    """Settles each handled delivery with ``transport``. ``observers`` are told of every
    dead letter and of a reject after an ``acks_late`` run (the worker's own list: observers
    added later are told too)."""

    __slots__ = ("_observers", "_transport")

    def __init__(self, transport: Transport, observers: list[TaskObserver]) -> None:
        self._transport = transport
        self._observers = observers

    async def ack(self, handling: Handling) -> None:
        """Acknowledge the message (already done if it was handed over to a lease)."""
        handling.settled = True
        if not handling.handed_off:
            await self._transport.ack(handling.delivery)

    async def reject(self, handling: Handling, *, requeue: bool) -> None:
        """Reject the message, back to its queue if ``requeue``."""
        handling.settled = True
        await self._transport.reject(handling.delivery, requeue=requeue)

    async def dead_letter(self, handling: Handling, reason: str, *, cause: str) -> None:
        """Move the message where the broker keeps what cannot be run, with ``reason``; the
        observers are told its ``cause`` (``malformed``, ``unknown_task``, ``worker_error``)."""
        await self._transport.dead_letter(handling.delivery, reason)
        handling.settled = True
        for observer in self._observers:
            observer.dead_lettered(handling.delivery.queue, reason=cause)

    async def after_error(self, handling: Handling, exc: Exception) -> None:
        """Settle a message the worker failed on (a bug, a broker error) without losing it:
        dead-lettered, or if even that fails given back to the broker."""
        if handling.settled:
            return
        try:
            await self.dead_letter(handling, f"worker error: {exc!r}", cause="worker_error")
        except Exception:
            with contextlib.suppress(Exception):  # last resort: give it back to the broker
                await self._transport.reject(handling.delivery, requeue=True)

    async def after_late_run(
        self, options: TaskOptions, message: TaskMessage, handling: Handling, outcome: Outcome
    ) -> None:
        """Ack or reject an ``acks_late`` message as Celery 5.7 does after the task ended (a
        message handed over to a lease was acked already: a requeue publishes it again)."""
        if outcome.state in (State.SUCCESS, State.RETRY):
            await self.ack(handling)
            return
        if outcome.timed_out and not options.acks_on_timeout:
            requeue = True
        elif not outcome.timed_out and not options.acks_on_failure:
            requeue = False
        else:
            await self.ack(handling)
            return
        if handling.handed_off:
            if requeue:
                delivery = handling.delivery
                message_again = without_lease(delivery.message)
                await self._transport.publish(message_again, routing_key=delivery.queue)
        else:
            await self.reject(handling, requeue=requeue)
        for observer in self._observers:
            observer.rejected(message, handling.delivery.queue, requeue=requeue)
