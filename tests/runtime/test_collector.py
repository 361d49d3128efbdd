"""The collector settings of a worker process: young collections ten times rarer, start-up
frozen once the worker consumes, and everything as it was once the worker has run."""

from __future__ import annotations

import asyncio
import gc

from runtime import App
from runtime.serve import YOUNG_COLLECTION_EVERY, freeze_when_ready, tuned_collector
from runtime.transports.memory import MemoryTransport
from runtime.worker import Worker


def test_a_worker_process_collects_less_often_and_leaves_the_collector_as_it_was() -> None:
    before = gc.get_threshold()

    with tuned_collector():
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *before[1:])
        gc.freeze()
        assert gc.get_freeze_count() > 0

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_start_up_is_frozen_once_the_worker_consumes() -> None:
    worker = Worker(App("collector"), queues=["q"], concurrency=1, hostname="w",
                    transport=MemoryTransport())  # fmt: skip
    freezing = asyncio.create_task(freeze_when_ready(worker))
    await asyncio.sleep(0.01)
    assert gc.get_freeze_count() == 0  # not before it is ready
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            await freezing
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        worker.stop()
        await running
