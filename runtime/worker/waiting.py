"""Tasks that wait without a slot: for their ETA, or for a rate-limit token.

A task due later never keeps a slot. One due within :data:`ETA_HOLD_WINDOW` is held here,
unacknowledged and slot-free; any other goes back to the broker with :meth:`Transport.defer`,
which returns it shortly before it is due. A task waiting for its rate limit gives its slot
back meanwhile (see :mod:`runtime.ratelimit`).

``max_held`` bounds the messages a worker keeps unacknowledged without a slot: those held,
those waiting for a rate-limit token, and those on their way back to the broker. A deferral
gives its slot back before it starts, so a thousand deferrals go out together (their
publishes confirmed in the broker's batches) while the slots run other tasks; with the bound
reached, one defers holding its slot, as flow control then wants.
:meth:`Waiting.cancel_all` ends every wait at shutdown: the messages go back unstarted. A
deferral already started is not cancelled: it ends in the broker either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runtime.errors import BrokerConnectionError

if TYPE_CHECKING:
    from protocol import TaskMessage
    from runtime.ratelimit import RateLimits
    from runtime.request import Request
    from runtime.task import Task
    from runtime.transports.base import Transport

    from .slots import Handling

__all__ = ["DEFAULT_MAX_HELD_ETA", "ETA_HOLD_WINDOW", "Waiting"]

#: Seconds before its ETA within which a task is held by the worker rather than deferred to
#: the broker (transports return deferred messages at most about a second early).
ETA_HOLD_WINDOW = 2.0
#: How many tasks waiting for their ETA a worker holds at most (unacknowledged, slot-free).
DEFAULT_MAX_HELD_ETA = 1000


class Waiting:
    """The handlers of a worker waiting without a slot, and the requests held for their ETA."""

    def __init__(self, transport: Transport, rate_limits: RateLimits, *, max_held: int) -> None:
        if max_held < 0:
            raise ValueError(f"max_held_eta must be 0 or more, not {max_held}")
        self.transport = transport
        self.rate_limits = rate_limits
        self.max_held = max_held
        self._waiting: set[asyncio.Task[Any]] = set()
        self._held: dict[asyncio.Task[Any], Request] = {}  # held for their ETA, by handler
        self._deferring = 0  # deferrals under way without a slot

    @property
    def without_slot(self) -> int:
        """Messages kept unacknowledged without a slot: waiting here, or being deferred."""
        return len(self._waiting) + self._deferring

    def held(self) -> list[Request]:
        """The requests held for their ETA (those deferred to the broker are the broker's)."""
        return list(self._held.values())

    def cancel_all(self) -> None:
        """End every wait: what waited has not started, and its message goes back."""
        for waiting in self._waiting:
            waiting.cancel()

    async def until_due(
        self,
        message: TaskMessage,
        handling: Handling,
        request: Callable[[], Request],
        log: Any,
    ) -> bool:
        """Wait for ``message.eta`` without a slot: ``True`` once due (a slot taken again),
        ``False`` if the message went back to the broker to wait there (it is settled).

        If the broker cannot take it back, it is held all the same: holding loses nothing,
        as the broker redelivers what a lost connection held. ``request`` builds what
        ``inspect scheduled`` lists.
        """
        assert message.eta is not None
        eta = message.eta
        delay = (eta - datetime.now(UTC)).total_seconds()
        if delay <= 0:
            return True
        room = self.without_slot < self.max_held
        if (delay > ETA_HOLD_WINDOW or not room) and await self._defer(handling, eta, room, log):
            return False
        current = asyncio.current_task()
        assert current is not None
        handling.release()
        self._waiting.add(current)
        self._held[current] = request()
        try:
            # The loop's timers may fire a little early by the wall clock: never start early.
            while (left := (eta - datetime.now(UTC)).total_seconds()) > 0:
                await asyncio.sleep(left)
            await handling.reacquire()
        finally:
            self._waiting.discard(current)
            self._held.pop(current, None)
        return True

    async def _defer(self, handling: Handling, eta: datetime, slot_free: bool, log: Any) -> bool:
        """Give the message back to the broker until ``eta``; whether it went. ``slot_free``:
        give the slot back first, the message counted against ``max_held`` meanwhile."""
        if slot_free:
            handling.release()
            self._deferring += 1
        try:
            await self.transport.defer(handling.delivery, eta)
        except BrokerConnectionError as exc:
            log.warning("task_defer_failed", eta=eta.isoformat(), error=str(exc))
            return False
        finally:
            if slot_free:
                self._deferring -= 1
        handling.settled = True
        log.info("task_deferred", eta=eta.isoformat())
        return True

    async def for_rate_limit(self, task: Task[Any, Any], handling: Handling) -> None:
        """Wait for a token of the task's rate limit, the slot given back meanwhile
        (see :mod:`runtime.ratelimit`); :meth:`cancel_all` ends the wait."""
        current = asyncio.current_task()
        assert current is not None
        self._waiting.add(current)
        try:
            await self.rate_limits.wait(
                task.name,
                task.options.rate_limit,
                release=handling.release,
                reacquire=handling.reacquire,
            )
        finally:
            self._waiting.discard(current)
