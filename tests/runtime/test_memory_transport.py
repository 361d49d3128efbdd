"""The in-process ``memory://`` transport: the worker's semantics with no broker at all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from protocol import WireMessage
from runtime import App
from runtime.transports.base import QueueSpec
from runtime.transports.memory import MemoryTransport
from runtime.worker.slots import Slots
from tests.consumer import SlotConsumer


def _message(n: int) -> WireMessage:
    return WireMessage(b'{"n": %d}' % n, "application/json", "utf-8", {"n": n})


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    opened = MemoryTransport(f"memory://{uuid.uuid4().hex}")
    await opened.declare([QueueSpec("q")])
    yield opened
    await opened.aclose()


async def test_publish_consume_ack(transport: MemoryTransport) -> None:
    await transport.publish(_message(1), routing_key="q")
    receiver = SlotConsumer(transport, ["q"], Slots(1), settle=0.05)

    delivery = await receiver.get()
    await transport.ack(delivery)

    assert delivery.message == _message(1)
    assert (delivery.queue, delivery.routing_key, delivery.redelivered) == ("q", "q", False)
    assert await transport.queue_depth("q") == (0, 1)
    await receiver.stop()
    assert await transport.queue_depth("q") == (0, 0)


async def test_one_message_per_free_slot(transport: MemoryTransport) -> None:
    for n in range(5):
        await transport.publish(_message(n), routing_key="q")
    slots = Slots(2)
    receiver = SlotConsumer(transport, ["q"], slots, settle=0.05)

    first, second = await receiver.get(), await receiver.get()
    await transport.ack(first)
    await receiver.nothing_more()
    assert await transport.queue_depth("q") == (3, 1)

    slots.give_back()
    third = await receiver.get()
    await receiver.nothing_more()
    assert [d.message.headers["n"] for d in (first, second, third)] == [0, 1, 2]
    await receiver.stop()


async def test_reject_requeues_at_the_head_or_drops(transport: MemoryTransport) -> None:
    for n in range(2):
        await transport.publish(_message(n), routing_key="q")
    slots = Slots(1)
    receiver = SlotConsumer(transport, ["q"], slots, settle=0.05)

    await transport.reject(await receiver.get(), requeue=True)
    slots.give_back()
    again = await receiver.get()
    await transport.reject(again, requeue=False)
    slots.give_back()
    last = await receiver.get()

    assert (again.message.headers["n"], again.redelivered) == (0, True)
    assert (last.message.headers["n"], last.redelivered) == (1, False)
    await receiver.stop()


async def test_dead_letter_keeps_the_message_and_its_reason(transport: MemoryTransport) -> None:
    await transport.publish(_message(7), routing_key="q")
    receiver = SlotConsumer(transport, ["q"], Slots(1), settle=0.05)

    await transport.dead_letter(await receiver.get(), "malformed: nope")

    dead = transport.broker.queue("q.dead").messages[0].message
    assert dead.body == _message(7).body
    assert dead.headers["x-celeriac-reason"] == "malformed: nope"
    assert dead.headers["x-celeriac-queue"] == "q"
    await receiver.stop()


async def test_close_gives_unsettled_deliveries_back(transport: MemoryTransport) -> None:
    await transport.publish(_message(3), routing_key="q")
    receiver = SlotConsumer(transport, ["q"], Slots(1), settle=0.05)
    await receiver.get()
    await receiver.stop()

    await transport.aclose()
    other = MemoryTransport(broker=transport.broker)
    again = await SlotConsumer(other, ["q"], Slots(1), settle=0.05).get()

    assert again.redelivered
    assert again.message.headers["n"] == 3


async def test_a_worker_runs_tasks_with_no_broker() -> None:
    """What an embedding user's own tests look like: real worker loop, memory:// broker."""
    app = App("embedded", broker=f"memory://{uuid.uuid4().hex}")
    done: list[int] = []

    @app.task(name="embedded.record")
    async def record(n: int) -> None:
        done.append(n)

    async with app.worker(queues=["celery"], concurrency=3) as worker:
        for n in range(10):
            await record.delay(n)
        async with asyncio.timeout(5):
            while len(done) < 10:
                await asyncio.sleep(0.01)

    assert sorted(done) == list(range(10))
    assert worker.processed == 10
