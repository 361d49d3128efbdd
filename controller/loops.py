"""The shape every periodic loop of the controller shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.errors import BackendError, BrokerConnectionError
from runtime.redis_client import stop_if_cancelled

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
