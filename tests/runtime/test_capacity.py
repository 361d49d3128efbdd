"""Slots: taking, giving back, and handing a slot to a task that waited without one."""

from __future__ import annotations

import asyncio

import pytest

from runtime.worker.slots import Slots


def test_try_take_takes_a_free_slot_and_says_so() -> None:
    slots = Slots(1)

    assert slots.try_take()
    assert not slots.try_take()
    assert slots.busy == 1


async def test_a_slot_given_back_goes_to_the_longest_waiting_acquire() -> None:
    slots = Slots(1)
    slots.take()
    changes: list[int] = []
    slots.on_change(lambda: changes.append(slots.free))
    order: list[str] = []

    async def acquire(name: str) -> None:
        await slots.acquire()
        order.append(name)

    waiting = [asyncio.create_task(acquire(name)) for name in ("first", "second")]
    await asyncio.sleep(0)
    slots.give_back()
    await asyncio.sleep(0)

    assert order == ["first"]
    assert slots.busy == 1
    assert changes == []  # it changed hands: a transport never saw it free
    assert not slots.try_take()  # nor does a delivery get it ahead of the second waiter
    slots.give_back()
    await asyncio.gather(*waiting)
    assert order == ["first", "second"]
    slots.give_back()
    assert slots.free == 1
    assert changes == [1]


async def test_acquire_takes_a_free_slot_at_once() -> None:
    slots = Slots(2)

    await slots.acquire()

    assert slots.busy == 1


async def test_a_cancelled_acquire_leaves_the_queue() -> None:
    slots = Slots(1)
    slots.take()
    cancelled = asyncio.create_task(slots.acquire())
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)

    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    slots.give_back()
    await waiting

    assert slots.busy == 1


async def test_a_slot_handed_over_as_the_waiter_is_cancelled_is_given_back() -> None:
    slots = Slots(1)
    slots.take()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)

    slots.give_back()  # handed over...
    waiter.cancel()  # ...but the waiter is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter

    assert slots.busy == 0
    assert slots.free == 1


async def test_a_cancelled_waiter_already_skipped_by_give_back() -> None:
    slots = Slots(1)
    slots.take()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)

    waiter.cancel()  # its future is cancelled now; the task sees it later
    slots.give_back()  # skips the cancelled future: the slot is free
    with pytest.raises(asyncio.CancelledError):
        await waiter

    assert slots.free == 1
