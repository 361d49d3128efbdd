"""The worker's slots: how many tasks may run at once, who is told when that changes, and
the slot one delivery holds while it is handled (:class:`Handling`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.transports.base import Delivery

__all__ = ["Handling", "Slots"]


class Slots:
    """The worker's concurrency slots (``-c N``), resizable at run time (:meth:`resize`).

    The worker takes a slot for every delivery it accepts and gives it back when the task is
    settled. Transports read :attr:`free` to size their prefetch and subscribe with
    :meth:`on_change` to hear when it moves.

    A delivery may also wait without a slot (a task waiting for a rate-limit token) and then
    :meth:`acquire` one: a slot given back goes straight to the longest waiting, before the
    transport hears it is free.

    Shrinking below the slots taken keeps the running tasks: :attr:`free` stays 0 (nothing new
    is taken, nothing is handed over) until enough are given back that fewer are busy than
    there are slots.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"concurrency must be at least 1, got {total}")
        self.total = total
        self._busy = 0
        self._freed = asyncio.Event()
        self._freed.set()
        self._listeners: list[Callable[[], None]] = []
        self._acquiring: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Slots not taken (0 while more are taken than there are, after a shrink)."""
        return max(0, self.total - self._busy)

    @property
    def busy(self) -> int:
        """Slots taken."""
        return self._busy

    def take(self) -> None:
        """Take a slot; raise ``RuntimeError`` if none is free (a flow-control bug)."""
        if self._busy >= self.total:
            raise RuntimeError("no free slot: a transport delivered beyond its capacity")
        self._busy += 1
        if self._busy >= self.total:
            self._freed.clear()
        self._notify()

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits in :meth:`acquire`; whether it did."""
        if self._busy >= self.total or self._acquiring:
            return False
        self.take()
        return True

    async def acquire(self) -> None:
        """Take a slot, waiting (first come, first served) for one to be given back if none
        is free."""
        if self.try_take():
            return
        handed = asyncio.get_running_loop().create_future()
        self._acquiring.append(handed)
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.give_back()  # handed over just as the waiter was cancelled
            elif handed in self._acquiring:  # give_back may have dropped it already
                self._acquiring.remove(handed)
            raise

    def give_back(self) -> None:
        """Return a slot: to the longest waiting :meth:`acquire`, if any."""
        if self._busy == 0:
            raise RuntimeError("no slot is taken")
        if self._hand_over():  # it changes hands: still busy, nobody to tell
            return
        self._busy -= 1
        if self._busy < self.total:
            self._freed.set()
        self._notify()

    def resize(self, total: int) -> None:
        """Have ``total`` slots from now on: new ones go first to the longest waiting
        :meth:`acquire`; below the slots taken, running tasks keep theirs (see the class)."""
        if total < 1:
            raise ValueError(f"concurrency must be at least 1, got {total}")
        self.total = total
        while self._busy < self.total and self._acquiring:
            self._busy += 1
            if not self._hand_over():
                self._busy -= 1
        if self._busy < self.total:
            self._freed.set()
        else:
            self._freed.clear()
        self._notify()

    def _hand_over(self) -> bool:
        """Give a slot being returned to the longest waiting :meth:`acquire`, if any may have
        it (none while more slots are taken than there are); whether one did."""
        if self._busy > self.total:
            return False
        while self._acquiring:
            handed = self._acquiring.popleft()
            if not handed.done():
                handed.set_result(None)
                return True
        return False

    async def wait_free(self) -> None:
        """Return once at least one slot is free."""
        await self._freed.wait()

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every take and give-back; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()


class Handling:
    """One delivery being handled: the slot it holds (given back once) and whether it is
    settled, so that an unexpected error can still settle it."""

    __slots__ = ("_held", "_slots", "delivery", "handed_off", "settled")

    def __init__(self, delivery: Delivery, slots: Slots, *, held: bool = True) -> None:
        self.delivery = delivery
        self.settled = False
        #: Acknowledged early, its message now kept by a lease (:mod:`runtime.worker.leases`).
        self.handed_off = False
        self._slots = slots
        self._held = held

    @property
    def held(self) -> bool:
        """Whether this delivery holds a slot now."""
        return self._held

    def release(self) -> None:
        """Give the slot back, if not done already."""
        if self._held:
            self._held = False
            self._slots.give_back()

    async def reacquire(self) -> None:
        """Take a slot again (after :meth:`release`, or for a delivery that came without one)."""
        if not self._held:
            await self._slots.acquire()
            self._held = True
