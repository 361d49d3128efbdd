"""The controller's periodic loop (``controller.loops.every``): it outlives a failing step, and
it ends when cancelled even if the step's client lost the cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog

from controller.loops import every
from controller.metrics import ControllerMetrics
from runtime.errors import BackendError


async def _every(step: Callable[[], Awaitable[None]]) -> None:
    await every(0.01, step, log=structlog.get_logger(), failed="step_failed",
                metrics=ControllerMetrics())  # fmt: skip


async def test_a_failing_step_is_logged_and_tried_again() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BackendError("result backend: down")

    with structlog.testing.capture_logs() as logs:
        loop = asyncio.create_task(_every(step))
        while calls < 3:
            await asyncio.sleep(0.01)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    assert [log["event"] for log in logs] == ["step_failed"]


async def test_a_cancellation_the_step_lost_still_ends_the_loop() -> None:
    entered = asyncio.Event()

    async def step() -> None:
        swallow = not entered.is_set()  # once: a failing run of this test still ends
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not swallow:
                raise
            # As redis-py 8.1's asyncio.wait_for on 3.11, cancelled as the send completes.

    loop = asyncio.create_task(_every(step))
    await entered.wait()
    loop.cancel()

    done, _ = await asyncio.wait({loop}, timeout=2)  # waiting, not cancelling it again
    assert done, "the loop went round with a cancellation pending"
    assert loop.cancelled()
