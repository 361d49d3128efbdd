"""A worker's loops that call Redis end when cancelled even if the call lost the cancellation,
as redis-py 8.1's ``asyncio.wait_for`` does on Python 3.11 when a cancel lands as a send
completes (``runtime.redis_client.stop_if_cancelled``); otherwise the worker never exits."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from runtime.worker.heartbeat import beat_forever


class SwallowingRuns:
    """A run registry whose first ``beat`` loses the cancellation, as redis-py may."""

    def __init__(self) -> None:
        self.beating = asyncio.Event()
        self.beats = 0

    async def beat(self, name: str, interval: float, **fields: Any) -> None:
        self.beats += 1
        if self.beats == 1:
            self.beating.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return  # lost: the call returns as if it had completed


async def test_the_heartbeat_loop_ends_when_its_beat_lost_the_cancellation() -> None:
    runs = SwallowingRuns()
    beating = asyncio.create_task(beat_forever(
        runs, "w@host", queues=["q"], concurrency=1, busy=lambda: 0, interval=0.01,  # type: ignore[arg-type]
        log=structlog.get_logger(),
    ))  # fmt: skip
    await runs.beating.wait()
    beating.cancel()

    done, _ = await asyncio.wait({beating}, timeout=2)  # waiting, not cancelling it again
    if not done:
        beating.cancel()  # it loses only the first: a failing run still ends
    assert done, f"the heartbeat loop went round with a cancellation pending ({runs.beats} beats)"
    assert beating.cancelled()
