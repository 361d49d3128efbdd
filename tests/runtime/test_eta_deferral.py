"""Deferring ETA tasks to the broker, as a Celery user sees it: a thousand countdowns sent at
once go back to the broker together, without keeping the worker's slots, so a plain task sent
after them starts while the broker is still taking them; and never more than ``max_held`` sit
unacknowledged without a slot meanwhile."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from protocol import TaskMessage, encode_task
from runtime import App
from runtime.transports.base import Delivery
from runtime.transports.memory import MemoryBroker, MemoryTransport
from runtime.worker import Worker


class SlowToDefer(MemoryTransport):
    """A memory broker that takes deferred messages back only once :attr:`gate` opens."""

    def __init__(self) -> None:
        super().__init__(broker=MemoryBroker())
        self.gate = asyncio.Event()
        self.deferring = 0
        self.deferred = 0

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        self.deferring += 1
        try:
            await self.gate.wait()
            await super().defer(delivery, eta)
            self.deferred += 1
        finally:
            self.deferring -= 1


def _app(ran: list[str]) -> App:
    app = App("eta-deferral")

    @app.task(name="eta.record")
    async def record(label: str) -> None:
        ran.append(label)

    return app


async def _send(transport: MemoryTransport, label: str, eta: datetime | None = None) -> None:
    message = TaskMessage(id=f"id-{label}", task="eta.record", args=(label,), eta=eta)
    await transport.publish(encode_task(message), routing_key="q")


async def _until(condition: object, seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def _later_then_now(
    transport: SlowToDefer, ran: list[str], *, later: int, max_held_eta: int = 1000
) -> tuple[Worker, asyncio.Task[None]]:
    """Queue ``later`` tasks due in ten minutes, then one due now; start a one-slot worker."""
    due = datetime.now(UTC) + timedelta(minutes=10)
    for n in range(later):
        await _send(transport, f"later-{n}", eta=due)
    await _send(transport, "now")
    worker = Worker(_app(ran), queues=["q"], concurrency=1, hostname="w", transport=transport,
                    max_held_eta=max_held_eta)  # fmt: skip
    return worker, asyncio.create_task(worker.run())


async def test_deferrals_keep_no_slot_so_a_plain_task_runs_while_they_go_out() -> None:
    ran: list[str] = []
    transport = SlowToDefer()
    worker, running = await _later_then_now(transport, ran, later=20)

    await _until(lambda: ran == ["now"])
    assert transport.deferring == 20  # it ran while every deferral was still under way
    await _until(lambda: worker.slots.free == 1)  # its slot came back: no deferral holds one
    transport.gate.set()
    await _until(lambda: transport.deferred == 20)
    worker.stop()
    await running

    assert ran == ["now"]  # nothing due ran early
    assert len(transport.broker.delayed) == 20


async def test_no_more_than_max_held_are_deferred_without_a_slot() -> None:
    ran: list[str] = []
    transport = SlowToDefer()
    worker, running = await _later_then_now(transport, ran, later=6, max_held_eta=2)

    # Two without a slot, the third deferring in the only slot; nothing more is taken.
    await _until(lambda: transport.deferring == 3)
    await asyncio.sleep(0.2)
    assert transport.deferring == 3
    assert worker.slots.free == 0
    assert ran == []
    transport.gate.set()
    await _until(lambda: ran == ["now"])
    await _until(lambda: transport.deferred == 6)
    worker.stop()
    await running

    assert len(transport.broker.delayed) == 6


async def test_a_deferral_under_way_at_shutdown_ends_in_the_broker() -> None:
    ran: list[str] = []
    transport = SlowToDefer()
    await _send(transport, "later", eta=datetime.now(UTC) + timedelta(minutes=10))
    worker = Worker(_app(ran), queues=["q"], concurrency=1, hostname="w", transport=transport)
    running = asyncio.create_task(worker.run())
    await _until(lambda: transport.deferring == 1)

    worker.stop()  # warm shutdown: waiting for an ETA ends, a deferral under way does not
    await asyncio.sleep(0.05)
    transport.gate.set()
    await running

    assert transport.deferred == 1
    assert len(transport.broker.delayed) == 1
    assert ran == []
