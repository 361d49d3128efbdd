"""Consuming from a transport the way the worker does, for transport tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from runtime.transports.base import Delivery, Transport
from runtime.worker.slots import Slots

__all__ = ["SlotConsumer"]


class SlotConsumer:
    """Takes a slot for every delivery before awaiting anything, as the worker does.

    With ``auto=True`` each delivery is acked and its slot given back at once. ``settle`` is
    how long :meth:`nothing_more` gives a transport to hand out a message it should not.
    """

    def __init__(
        self,
        transport: Transport,
        queues: Sequence[str],
        slots: Slots,
        *,
        auto: bool = False,
        settle: float = 0.5,
    ) -> None:
        self.transport, self.slots, self.auto, self.settle = transport, slots, auto, settle
        self.received: asyncio.Queue[Delivery] = asyncio.Queue()
        self.count = 0
        self.task = asyncio.create_task(self._run(list(queues)))

    async def _run(self, queues: list[str]) -> None:
        async for delivery in self.transport.consume(queues, self.slots):
            self.slots.take()
            self.count += 1
            if self.auto:
                await self.transport.ack(delivery)
                self.slots.give_back()
            self.received.put_nowait(delivery)

    async def get(self, timeout: float = 10) -> Delivery:
        """The next delivery handed out."""
        async with asyncio.timeout(timeout):
            return await self.received.get()

    async def nothing_more(self) -> None:
        """Fail if another delivery is handed out within ``settle`` seconds."""
        await asyncio.sleep(self.settle)
        assert self.received.empty(), "received beyond the free slots"

    async def stop(self) -> None:
        """Stop consuming."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
