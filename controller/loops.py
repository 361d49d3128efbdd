"""The shape every periodic loop of the controller shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.errors import BackendError, BrokerConnectionError

from .metrics import ControllerMetrics

__all__ = ["every", "stop_if_cancelled"]


async def every(
    interval: float,
    step: Callable[[], Awaitable[object]],
    *,
    log: Any,
    failed: str,
    metrics: ControllerMetrics,
) -> None:
    """Run ``step`` now and then every ``interval`` seconds, until cancelled. A step that fails
    because Redis or the broker is away is logged as event ``failed`` (and the controller is
    not ready until a pass succeeds) and tried again next time: the controller outlives an
    outage. A cancellation the step lost is honoured after it (:func:`stop_if_cancelled`)."""
    while True:
        try:
            await step()
        except (BackendError, BrokerConnectionError) as exc:
            log.error(failed, error=str(exc))
            metrics.failed(failed)
        else:
            metrics.passed(failed)
        stop_if_cancelled(failed)
        await asyncio.sleep(interval)


def stop_if_cancelled(loop: str) -> None:
    """Raise ``CancelledError`` if the current task was cancelled during a step that lost the
    cancellation; call it after every step of a loop that runs until cancelled.

    redis-py 8.1 sends each command through ``asyncio.wait_for`` (its ``socket_timeout`` is 5 s
    by default), which on Python 3.11 returns the send's result when the cancellation lands in
    the turn the send completes: the task counts the cancel request (``cancelling()``) but
    nothing is raised, and a loop would go round for ever. Seen in CI as a controller that
    never exited on SIGTERM, its watch loop going round with ``cancelling() == 1``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"{loop}: cancelled during a step")
