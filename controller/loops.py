"""The shape every periodic loop of the controller shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.errors import BackendError, BrokerConnectionError

from .metrics import ControllerMetrics

__all__ = ["every"]


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
    outage.

    A cancellation that arrives while a step waits on a connection being re-made may come out
    of the client as one of those errors: the task's own count of cancel requests is checked
    after every step, so the loop still ends (seen once: a controller that never exited on
    SIGTERM after a Redis outage, its watch loop going round with a cancel pending)."""
    this = asyncio.current_task()
    assert this is not None
    while True:
        try:
            await step()
        except (BackendError, BrokerConnectionError) as exc:
            log.error(failed, error=str(exc))
            metrics.failed(failed)
        else:
            metrics.passed(failed)
        if this.cancelling():
            raise asyncio.CancelledError(f"{failed}: cancelled during a step")
        await asyncio.sleep(interval)
