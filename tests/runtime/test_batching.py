"""TurnBatch: what one turn of the event loop asks for goes out in one call."""

from __future__ import annotations

import asyncio

import pytest

from runtime.batching import TurnBatch


class Recorder:
    """A ``send`` that records each batch, answers ``item * 10``, and can be held or fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next: Exception | None = None

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if (error := self.fail_next) is not None:
            self.fail_next = None
            raise error
        return [item * 10 for item in items]


async def test_one_turns_items_go_in_one_call_and_each_caller_gets_its_answer() -> None:
    recorder = Recorder()
    batch = TurnBatch(recorder.send, most=100, name="test")

    answers = await asyncio.gather(*(batch.submit(n) for n in range(5)))

    assert answers == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]]


async def test_batches_are_at_most_most_items_and_keep_their_order() -> None:
    recorder = Recorder()
    batch = TurnBatch(recorder.send, most=2, name="test")

    answers = await asyncio.gather(*(batch.submit(n) for n in range(5)))

    assert answers == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_items_asked_for_while_a_batch_is_in_flight_go_in_the_next_one() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batch = TurnBatch(recorder.send, most=100, name="test")
    first = asyncio.gather(*(batch.submit(n) for n in (1, 2)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = asyncio.gather(*(batch.submit(n) for n in (3, 4)))
    await asyncio.sleep(0)

    assert recorder.batches == [[1, 2]]  # one call outstanding at a time
    recorder.release.set()
    assert (await first, await later) == ([10, 20], [30, 40])
    assert recorder.batches == [[1, 2], [3, 4]]


async def test_an_error_reaches_every_caller_of_its_batch_and_no_other() -> None:
    recorder = Recorder()
    recorder.fail_next = ConnectionError("away")
    batch = TurnBatch(recorder.send, most=2, name="test")

    results = await asyncio.gather(*(batch.submit(n) for n in range(3)), return_exceptions=True)

    assert [type(r) for r in results[:2]] == [ConnectionError, ConnectionError]
    assert results[2] == 20
    assert await batch.submit(7) == 70  # and the next batch goes out as usual


@pytest.mark.parametrize("turns", [1, 2], ids=["before-the-batch-goes", "with-it-in-flight"])
async def test_a_cancelled_caller_does_not_take_its_item_back(turns: int) -> None:
    recorder = Recorder()
    recorder.release.clear()
    batch = TurnBatch(recorder.send, most=100, name="test")
    caller = asyncio.create_task(batch.submit(1))
    for _ in range(turns):
        await asyncio.sleep(0)
    caller.cancel()
    recorder.release.set()
    await batch.drain()

    assert recorder.batches == [[1]]
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_items_left_when_the_sender_is_cancelled_are_cancelled_not_lost_silently() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batch = TurnBatch(recorder.send, most=1, name="test")
    callers = [asyncio.create_task(batch.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    (sender,) = [t for t in asyncio.all_tasks() if t.get_name() == "test"]

    sender.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)

    assert recorder.batches == [[1]]
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
