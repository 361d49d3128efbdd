"""The worker's slots when a delivery arrives with none free (a task that waited without its
slot took it back meanwhile): the delivery waits for one, and concurrency is never exceeded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from protocol import TaskMessage, WireMessage, encode_task
from runtime import App
from runtime.transports.base import BrokerHealth, Capacity, Delivery, QueueSpec
from runtime.worker import Worker


class Overeager:
    """A transport that hands out every message at once, whatever the free slots."""

    def __init__(self, messages: list[WireMessage]) -> None:
        self._messages = messages
        self.acked: list[Delivery] = []
        self._closed = asyncio.Event()
        self.health = BrokerHealth(connected=True)

    async def connect(self) -> None:
        return None

    async def declare(self, queues: Sequence[QueueSpec]) -> None:
        return None

    async def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        for message in self._messages:
            yield Delivery(message, "q", "", "q", False, handle=None)
        await self._closed.wait()

    async def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery)

    async def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        raise AssertionError("nothing is rejected here")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        raise AssertionError("nothing is dead-lettered here")

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        raise AssertionError("nothing is deferred here")

    async def publish(self, message: WireMessage, *, routing_key: str, exchange: str = "") -> None:
        raise AssertionError("nothing is published here")

    async def queue_depth(self, queue: str) -> tuple[int, int | None]:
        return (0, None)

    async def aclose(self) -> None:
        self._closed.set()


async def test_deliveries_beyond_the_free_slots_wait_for_one() -> None:
    app = App("slots")
    running: list[int] = []
    most = 0
    done: list[int] = []

    @app.task(name="slots.step")
    async def step(n: int) -> None:
        nonlocal most
        running.append(n)
        most = max(most, len(running))
        await asyncio.sleep(0.01)
        running.remove(n)
        done.append(n)

    messages = [encode_task(TaskMessage(id=f"id-{n}", task="slots.step", args=(n,)))
                for n in range(4)]  # fmt: skip
    transport = Overeager(messages)
    worker = Worker(app, queues=["q"], concurrency=1, hostname="w", transport=transport)
    running_worker = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while len(done) < 4:
            await asyncio.sleep(0.01)
    worker.stop()
    await running_worker

    assert sorted(done) == [0, 1, 2, 3]
    assert most == 1
    assert len(transport.acked) == 4
    assert worker.slots.free == 1
